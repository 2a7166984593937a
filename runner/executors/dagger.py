"""Dagger executor: each step in a container of its agent's image, on a Dagger engine.

This is the only module that imports `dagger` (the `dagger` extra). It talks to an engine session
in one of two ways, both through one isolated client per executor (never the SDK's global `dag`):

- attach mode: `DAGGER_SESSION_PORT` + `DAGGER_SESSION_TOKEN` (set by `dagger run ...`, or given
  to the constructor) name a session that already exists;
- otherwise a `dagger session` child process of a `dagger` CLI found on PATH (or `cli=`,
  or `_EXPERIMENTAL_DAGGER_CLI_BIN`), which reads `_EXPERIMENTAL_DAGGER_RUNNER_HOST` to reach a
  shared or remote engine. The SDK's own CLI download is never used (it fails offline).

What the SDK leaves out and this module adds: a deadline on the whole connect (session start,
schema introspection, version query); no retry of queries (a slow exec is never sent twice);
secrets sent as GraphQL variables, so the printed form of every query is free of them, and
gql's payload debug logging dropped; engine failures raised as `ExecutorUnavailable`, never as
SDK, gql, httpx or tenacity types.

A step: the image, the agent's `requirements.txt` installed with pip (cached by the engine until
the image or the file changes), then a per-step cache-buster, the environment, secrets
(`set_secret` + `with_secret_variable`), the agent directory (read-only) and the workspace
(writable; exported back when its digest changed) mounted, the input file, and the command
under `timeout` and `ulimit -v` inside the container (Dagger has no exec timeout, memory or CPU
limit of its own) plus a client-side deadline. Output is buffered by the engine: the step log
arrives when the command ends. See docs/executors.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import dagger
import gql
import httpx
from dagger.client._config import ConnectConfig
from dagger.client._core import Context
from dagger.client._session import ConnectParams, SingleConnection
from gql.transport.exceptions import TransportError as GqlTransportError
from gql.transport.exceptions import TransportQueryError

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
from runner.executors.images import ImagePolicy, image_problems, parse_image
from runner.spec.quantity import memory_bytes
from runner.workspace import borrowed_objects

log = logging.getLogger(__name__)

AGENT_DIR = "/runner/agent"
WORKSPACE = "/runner/workspace"
INPUT = "/runner/io/input.json"
OUTPUT = "/runner/io/output.json"
REQUIREMENTS = "/runner/requirements.txt"
CACHE_BUSTER = "RUNNER_CACHE_BUSTER"
PIP = ("python", "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check")
PIP_INSTALL = (*PIP, "--quiet", "-r", REQUIREMENTS)

# `sh -c WRAPPER runner-step <KiB> <seconds> <command...>`: memory cap and timeout in the
# container, with whatever the image's shell and `timeout` (coreutils or busybox) offer.
WRAPPER = """kib="$1"; secs="$2"; shift 2
if [ "$kib" -gt 0 ] && ! ulimit -v "$kib" 2>/dev/null; then
  echo "[runner] this image cannot cap memory (ulimit -v); the agent runs uncapped" >&2
fi
if timeout -k 1 1 true 2>/dev/null; then exec timeout -k {grace} "$secs" "$@"; fi
if command -v timeout >/dev/null 2>&1; then exec timeout -s KILL "$secs" "$@"; fi
echo "[runner] no timeout command in this image: only the runner's deadline applies" >&2
exec "$@"
"""
TIMEOUT_CODES = (124, 137)  # timeout(1): TERM worked / KILL was needed

SET_SECRET = gql.gql(
    "query SetSecret($name: String!, $plaintext: String!) "
    "{ setSecret(name: $name, plaintext: $plaintext) { id } }"
)

# Failures of these kinds mean "the engine is not usable now", not "this step is wrong".
INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    dagger.ClientConnectionError,
    dagger.TransportError,
    dagger.InvalidQueryError,  # the engine's schema lacks what this SDK sends: wrong version
    GqlTransportError,
    httpx.HTTPError,
    OSError,
    EOFError,
)
# An engine error naming one of these is a registry or network outage, worth waiting out.
TRANSIENT_MARKERS = (
    "i/o timeout",
    "connection refused",
    "connection reset",
    "tls handshake timeout",
    "context deadline exceeded",
    "toomanyrequests",
    "502 bad gateway",
    "503 service unavailable",
    "504 gateway",
    "temporary failure",
)


class _Refused(Exception):
    """The engine answered that it will not run this step (a step failure, not an outage)."""


class _NoPayloads(logging.Filter):
    """gql logs whole request and response bodies at DEBUG (`>>> {...}`): they carry secret
    values (as variables) and agent output. Drop those records, keep the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith((">>>", "<<<")))


def _quiet_payloads() -> None:
    target = logging.getLogger("gql.transport.httpx")
    if not any(isinstance(f, _NoPayloads) for f in target.filters):
        target.addFilter(_NoPayloads())


def _infrastructure(exc: BaseException) -> bool:
    if isinstance(exc, TransportQueryError):  # an answer from the engine, not a broken link
        return False
    if isinstance(exc, BaseExceptionGroup):
        return all(_infrastructure(e) for e in exc.exceptions)
    return isinstance(exc, INFRASTRUCTURE)


def _agent_files(step: StepSpec) -> tuple[str, str | None]:
    """The agent's directory (absolute) and its requirements.txt, when it has one."""
    agent_dir = Path(step.agent.directory).resolve()
    requirements = agent_dir / "requirements.txt"
    text = requirements.read_text(encoding="utf-8") if requirements.is_file() else None
    return str(agent_dir), text


def _describe(exc: BaseException) -> str:
    """A short, safe account of an infrastructure error (no query text, no payload)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class DaggerExecutor:
    name = "dagger"

    def __init__(
        self,
        *,
        session_port: int | None = None,
        session_token: str | None = None,
        cli: str | None = None,
        connect_timeout: float = 30.0,
        health_timeout: float = 10.0,
        default_image: str = "python:3.12-slim",
        allowed_registries: Sequence[str] = (),
        require_digest: bool = False,
        kill_grace: float = 5.0,
        deadline_slack: float = 600.0,
        max_output_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        """`deadline_slack` is what the client-side deadline allows beyond the step's timeout
        and `kill_grace`: image pull, requirements install, mounts and read-back."""
        self.session_port = session_port
        self.session_token = session_token
        self.cli = cli
        self.connect_timeout = connect_timeout
        self.health_timeout = health_timeout
        self.default_image = default_image
        self.policy = ImagePolicy.of(allowed_registries, require_digest)
        self.kill_grace = kill_grace
        self.deadline_slack = deadline_slack
        self.max_output_bytes = max_output_bytes
        self.engine_version = ""
        self._client: dagger.Client | None = None
        self._conn: SingleConnection | None = None
        self._session: asyncio.subprocess.Process | None = None
        self._session_log: IO[bytes] | None = None
        self._where = ""
        self._lock = asyncio.Lock()
        _quiet_payloads()

    # -- the engine session -------------------------------------------------------------------
    async def _connected(self) -> tuple[dagger.Client, SingleConnection]:
        client, conn = self._client, self._conn
        if client is not None and conn is not None:
            return client, conn
        async with self._lock:
            if self._client is None or self._conn is None:
                try:
                    async with asyncio.timeout(self.connect_timeout):
                        await self._connect()
                except TimeoutError:
                    where = self._where or "the engine"
                    await self._reset()
                    raise ExecutorUnavailable(
                        f"no Dagger engine session within the {self.connect_timeout:g}s connect "
                        f"deadline ({where})"
                    ) from None
                except ExecutorUnavailable:
                    await self._reset()
                    raise
                except Exception as exc:
                    if not _infrastructure(exc):
                        raise
                    where = self._where or "the engine"
                    await self._reset()
                    raise ExecutorUnavailable(
                        f"cannot connect to the Dagger engine ({where}): {_describe(exc)}"
                    ) from None
            assert self._client is not None
            assert self._conn is not None
            return self._client, self._conn

    def _attach_params(self) -> tuple[int, str] | None:
        port = self.session_port or os.environ.get("DAGGER_SESSION_PORT")
        token = self.session_token or os.environ.get("DAGGER_SESSION_TOKEN")
        if not port:
            return None
        if not token:
            raise ExecutorUnavailable(
                "DAGGER_SESSION_PORT is set but DAGGER_SESSION_TOKEN is not: attach mode needs both"
            )
        try:
            return int(port), token
        except ValueError:
            raise ExecutorUnavailable(f"DAGGER_SESSION_PORT is not a port: {port!r}") from None

    async def _connect(self) -> None:
        attach = self._attach_params()
        if attach is not None:
            port, token = attach
            self._where = f"attached to the session on 127.0.0.1:{port}"
        else:
            port, token = await self._start_session()
        conn = SingleConnection(
            ConnectParams(port=port, session_token=token),
            # no `retry`: gql would re-send a query whose answer is late (twice-run steps)
            ConnectConfig(timeout=dagger.Timeout(None, connect=self.connect_timeout), retry=None),
        )
        self._conn = conn
        await conn.connect()  # fetches the schema: the first round trip
        client = dagger.Client(Context(conn=conn))
        self.engine_version = await client.version()
        self._client = client
        log.info("connected to Dagger engine %s (%s)", self.engine_version, self._where)

    def _find_cli(self) -> str:
        cli = self.cli or os.environ.get("_EXPERIMENTAL_DAGGER_CLI_BIN") or shutil.which("dagger")
        if not cli:
            raise ExecutorUnavailable(
                "no Dagger engine session: run the runner under `dagger run`, set "
                "DAGGER_SESSION_PORT and DAGGER_SESSION_TOKEN, or install the dagger CLI "
                "(the SDK's own download of it is not used)"
            )
        return cli

    async def _start_session(self) -> tuple[int, str]:
        cli = self._find_cli()
        remote = os.environ.get("_EXPERIMENTAL_DAGGER_RUNNER_HOST")
        self._where = f"`{cli} session`" + (f" on {remote}" if remote else "")
        try:
            sdk = metadata.version("dagger-io")
        except metadata.PackageNotFoundError:
            sdk = "n/a"
        # the session's stderr, kept for a failure message; closed by `_reset`
        self._session_log = tempfile.TemporaryFile(prefix="runner-dagger-session-")  # noqa: SIM115
        self._session = await asyncio.create_subprocess_exec(
            cli,
            "session",
            "--label",
            "dagger.io/sdk.name:python",
            "--label",
            f"dagger.io/sdk.version:{sdk}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._session_log,
        )
        assert self._session.stdout is not None
        line = await self._session.stdout.readline()  # {"port": ..., "session_token": ...}
        try:
            params = json.loads(line)
            return int(params["port"]), str(params["session_token"])
        except (ValueError, KeyError, TypeError):
            raise ExecutorUnavailable(
                f"`dagger session` did not start: {self._session_tail() or 'no output'}"
            ) from None

    def _session_tail(self) -> str:
        if self._session_log is None:
            return ""
        self._session_log.seek(0)
        lines = self._session_log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(lines[-5:])

    async def _reset(self) -> None:
        """Forget the session (after a failure); the next call connects again."""
        conn, session, session_log = self._conn, self._session, self._session_log
        self._client = self._conn = self._session = self._session_log = None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)
        if session is not None:
            if session.stdin is not None:  # closing stdin ends `dagger session` cleanly
                session.stdin.close()
            try:
                await asyncio.wait_for(session.wait(), timeout=10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    session.kill()
                await session.wait()
        if session_log is not None:
            session_log.close()

    async def aclose(self) -> None:
        """Close the client and end a `dagger session` this executor started."""
        await self._reset()

    async def health(self) -> Health:
        """The engine answers a version query within `health_timeout` (connecting first, under
        the connect deadline, when there is no session yet)."""
        try:
            client, _ = await self._connected()
            async with asyncio.timeout(self.health_timeout):
                version = await client.version()
        except ExecutorUnavailable as exc:
            return Health(ok=False, detail=str(exc), sandboxed=True)
        except TimeoutError:  # slow, maybe busy: steps in flight keep their session
            return Health(
                ok=False,
                detail=f"the Dagger engine did not answer within {self.health_timeout:g}s "
                f"({self._where})",
                sandboxed=True,
            )
        except Exception as exc:
            if not (_infrastructure(exc) or isinstance(exc, dagger.QueryError)):
                raise
            await self._reset()
            return Health(ok=False, detail=f"Dagger engine: {_describe(exc)}", sandboxed=True)
        self.engine_version = version
        return Health(ok=True, detail=f"Dagger engine {version} ({self._where})", sandboxed=True)

    # -- one step -----------------------------------------------------------------------------
    async def run_step(self, step: StepSpec, log: LogSink) -> StepResult:
        started = time.monotonic()
        masker = Masker(step.masking)
        image = step.agent.image or self.default_image
        problems = image_problems(image, self.policy)
        if problems:
            message = "; ".join(problems)
            await log(f"[runner] {message}\n".encode())
            return StepResult(exit_code=None, error=message, duration=time.monotonic() - started)
        for note in self._notes(step, image):
            await log(f"[runner] {note}\n".encode())
        client, conn = await self._connected()
        deadline = step.timeout + self.kill_grace + self.deadline_slack
        scope = asyncio.timeout(deadline)
        try:
            async with scope:
                return await self._run(client, conn, step, image, masker, log, started)
        except TimeoutError:
            if not scope.expired():
                await self._reset()
                raise ExecutorUnavailable("Dagger engine: a connection timed out") from None
            message = (
                f"timed out after {step.timeout:g}s: the engine did not answer within "
                f"{deadline:g}s (the step's timeout plus {deadline - step.timeout:g}s); "
                "it was not sent again"
            )
            await log(f"[runner] {message}\n".encode())
            return StepResult(
                exit_code=None,
                error=message,
                timed_out=True,
                duration=time.monotonic() - started,
            )
        except _Refused as exc:
            message = masker.mask(str(exc).encode()).decode()
            await log(f"[runner] {message}\n".encode())
            return StepResult(exit_code=None, error=message, duration=time.monotonic() - started)
        except dagger.QueryError as exc:
            text = str(exc)
            if any(marker in text.lower() for marker in TRANSIENT_MARKERS):
                await self._reset()
                raise ExecutorUnavailable(
                    f"Dagger engine: {masker.mask(text.encode()).decode()}"
                ) from None
            message = masker.mask(f"the Dagger engine refused the step: {text}".encode()).decode()
            await log(f"[runner] {message}\n".encode())
            return StepResult(exit_code=None, error=message, duration=time.monotonic() - started)
        except Exception as exc:
            if not _infrastructure(exc):
                raise
            await self._reset()
            raise ExecutorUnavailable(f"Dagger engine unreachable: {_describe(exc)}") from None

    def _notes(self, step: StepSpec, image: str) -> list[str]:
        notes = [f"running in {image} on the Dagger engine"]
        if not parse_image(image).pinned:
            notes.append(f"{image} is not pinned by digest: the tag may point elsewhere next time")
        if not step.agent.network:
            notes.append(
                "network: false is not enforced by the Dagger executor (the engine gives every "
                "container network access; restrict egress on the engine's host)"
            )
        if step.agent.cpu:
            notes.append(f"resources.cpu ({step.agent.cpu}) is not enforced by the Dagger executor")
        if step.agent.pids:  # no pids limit in Dagger's API; `ulimit -u` would not bind root
            notes.append(
                f"resources.pids ({step.agent.pids}) is not enforced by the Dagger executor"
            )
        return notes

    def _environment(self, step: StepSpec) -> dict[str, str]:
        env = {
            "RUNNER_INPUT": INPUT,
            "RUNNER_OUTPUT": OUTPUT,
            "RUNNER_WORKSPACE": WORKSPACE,
            "RUNNER_AGENT_DIR": AGENT_DIR,
            "RUNNER_RUN_ID": str(step.run_id),
            "RUNNER_STEP_ID": step.step_id,
            "RUNNER_ATTEMPT": str(step.attempt),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            **python_environment(AGENT_DIR),
        }
        return env | dict(step.env)

    def _command(self, step: StepSpec) -> list[str]:
        kib = memory_bytes(step.agent.memory) // 1024
        seconds = str(max(1, math.ceil(step.timeout)))
        script = WRAPPER.replace("{grace}", str(max(1, math.ceil(self.kill_grace))))
        return ["sh", "-c", script, "runner-step", str(kib), seconds, *step.agent.command]

    async def _secret(
        self, client: dagger.Client, conn: SingleConnection, step: StepSpec, name: str
    ) -> dagger.Secret:
        """A secret whose value travels as a GraphQL variable, never inside a query's text."""
        request = gql.GraphQLRequest(
            SET_SECRET,
            variable_values={
                "name": f"runner/{step.run_id}/{step.step_id}/{step.attempt}/{name}",
                "plaintext": step.secrets[name],
            },
        )
        try:
            data = await conn.session.execute(request)
        except TransportQueryError as exc:  # an answer: the engine refused this secret
            raise _Refused(f"the Dagger engine refused the secret {name}: {exc}") from None
        return client.load_secret_from_id(dagger.SecretID(data["setSecret"]["id"]))

    async def _run(
        self,
        client: dagger.Client,
        conn: SingleConnection,
        step: StepSpec,
        image: str,
        masker: Masker,
        log: LogSink,
        started: float,
    ) -> StepResult:
        agent_dir, requirements = _agent_files(step)
        ctr = client.container().from_(image)
        if requirements is not None:  # cached by the engine until the image or file changes
            ctr = ctr.with_new_file(REQUIREMENTS, requirements).with_exec(list(PIP_INSTALL))
        buster = f"{step.run_id}/{step.step_id}/{step.attempt}/{uuid.uuid4().hex}"
        ctr = ctr.with_env_variable(CACHE_BUSTER, buster)  # everything below runs every time
        for key, value in self._environment(step).items():
            ctr = ctr.with_env_variable(key, value)
        for name in step.agent.secrets:
            if name in step.secrets:
                ctr = ctr.with_secret_variable(name, await self._secret(client, conn, step, name))
        for objects in borrowed_objects(step.workspace):  # read-only: history is never rewritten
            ctr = ctr.with_mounted_directory(
                objects, client.host().directory(objects), read_only=True
            )
        workspace = client.host().directory(str(step.workspace))
        ctr = (
            ctr.with_mounted_directory(
                AGENT_DIR, client.host().directory(agent_dir), read_only=True
            )
            .with_mounted_directory(WORKSPACE, workspace)
            .with_new_file(INPUT, json.dumps(step.inputs))
            .with_workdir(AGENT_DIR)
            .with_exec(self._command(step), expect=dagger.ReturnType.ANY)
        )
        exec_started = time.monotonic()
        try:
            done = await ctr.sync()
        except dagger.ExecError as exc:  # exit codes outside ANY: 128-191, killed by a signal
            return await self._exec_error(exc, step, masker, log, started, exec_started)
        code = await done.exit_code()
        output = await done.combined_output()
        if output:
            await log(masker.mask(output.encode()))
        await self._export(done, workspace, step, log)
        duration = time.monotonic() - started
        if code in TIMEOUT_CODES and time.monotonic() - exec_started >= step.timeout:
            return await self._timed_out(step, log, duration)
        if code != 0:
            return StepResult(
                exit_code=code, error=f"the agent exited with code {code}", duration=duration
            )
        outputs, error = await self._outputs(done, step)
        if error:
            await log(f"[runner] {error}\n".encode())
        return StepResult(exit_code=0, outputs=outputs, error=error, duration=duration)

    async def _exec_error(
        self,
        exc: dagger.ExecError,
        step: StepSpec,
        masker: Masker,
        log: LogSink,
        started: float,
        exec_started: float,
    ) -> StepResult:
        text = (exc.stdout or "") + (exc.stderr or "")
        if text:
            await log(masker.mask(text.encode()))
        duration = time.monotonic() - started
        if tuple(exc.command) == PIP_INSTALL:
            message = (
                f"installing the agent's requirements.txt failed (pip exited with code "
                f"{exc.exit_code})"
            )
            await log(f"[runner] {message}\n".encode())
            return StepResult(exit_code=exc.exit_code, error=message, duration=duration)
        if exc.exit_code in TIMEOUT_CODES and time.monotonic() - exec_started >= step.timeout:
            return await self._timed_out(step, log, duration)
        signal = exc.exit_code - 128
        why = f"the agent was killed by signal {signal} (exit code {exc.exit_code})"
        if signal == 9:
            why += " (out of memory?)"
        await log(f"[runner] {why}; its workspace changes were not exported\n".encode())
        return StepResult(exit_code=exc.exit_code, error=why, duration=duration)

    async def _timed_out(self, step: StepSpec, log: LogSink, duration: float) -> StepResult:
        message = f"timed out after {step.timeout:g}s; the agent's processes were killed"
        await log(f"[runner] {message}\n".encode())
        return StepResult(exit_code=None, error=message, timed_out=True, duration=duration)

    async def _export(
        self, done: dagger.Container, before: dagger.Directory, step: StepSpec, log: LogSink
    ) -> None:
        after = done.directory(WORKSPACE)
        if await after.digest() != await before.digest():
            await after.export(str(step.workspace), wipe=True)
            await log(b"[runner] the agent changed the workspace: changes exported back\n")

    async def _outputs(
        self, done: dagger.Container, step: StepSpec
    ) -> tuple[Mapping[str, Any] | None, str | None]:
        file = done.file(OUTPUT)
        try:
            size = await file.size()
        except dagger.QueryError:
            return None, NO_OUTPUT
        if size > self.max_output_bytes:
            return None, f"the agent's output is {size} bytes; at most {self.max_output_bytes}"
        text: str = await file.contents()
        return read_outputs(text, step)
