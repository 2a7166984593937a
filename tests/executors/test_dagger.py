"""The Dagger executor through the real dagger-io SDK, attached to the engine DOUBLE
(tests/executors/dagger_double.py) on 127.0.0.1: connecting (deadline, CLI session, attach mode),
never sending a step twice, error mapping, secrets, cache-busting, workspace export, limits.
A last test runs on a real engine when this machine has one, and says why it skipped otherwise."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

pytest.importorskip("dagger", reason="dagger-io is not installed (the `dagger` extra)")

from runner.executors.base import ExecutorUnavailable, open_executor
from runner.executors.dagger import DaggerExecutor
from runner.model import Agent
from runner.workspace import Workspaces
from tests.executors.dagger_double import EngineDouble
from tests.executors.test_conformance import processes_with
from tests.executors.test_conformance import run as run_step

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parents[2]

ECHO = """
import json, os
inputs = json.load(open(os.environ["RUNNER_INPUT"]))
print("cwd", os.getcwd(), "workspace", os.environ["RUNNER_WORKSPACE"])
print("home-leak", os.environ.get("RUNNER_TEST_LEAK"))
json.dump({"answer": inputs["n"] + 1}, open(os.environ["RUNNER_OUTPUT"], "w"))
"""
OUTPUTS = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "integer"}}}


def make_agent(folder: Path, program: str, **spec: object) -> Agent:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(textwrap.dedent(program))
    fields: dict[str, object] = {
        "name": "probe",
        "command": ("python", "main.py"),
        "directory": str(folder),
        "source": "test",
        "digest": "d",
        "image": "python:3.12-slim",
        "outputs": OUTPUTS,
    }
    fields.update(spec)
    return Agent(**fields)  # type: ignore[arg-type]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    (path / "README.md").write_text("hello\n")
    return path


run = functools.partial(run_step, run_id=7)  # ids the assertions below look for


def attached(engine: EngineDouble, **options: object) -> DaggerExecutor:
    return DaggerExecutor(
        session_port=engine.port,
        session_token=engine.token,
        connect_timeout=10,
        **options,  # type: ignore[arg-type]
    )


def agent_execs(engine: EngineDouble) -> list[tuple[str, ...]]:
    return [argv for argv in engine.execs if argv[:2] == ("sh", "-c")]


# -- a step -----------------------------------------------------------------------------------
async def test_a_step_runs_in_its_image_with_its_files_on_the_engine_double(
    dagger_executor: DaggerExecutor,
    engine_double: EngineDouble,
    tmp_path: Path,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNNER_TEST_LEAK", "from-the-runner")
    result, log = await run(dagger_executor, make_agent(tmp_path / "agent", ECHO), workspace)
    assert result.ok, log
    assert result.outputs == {"answer": 42}
    assert "cwd /runner/agent workspace /runner/workspace" in log
    assert "home-leak None" in log  # the runner's environment never reaches the container
    assert "running in python:3.12-slim on the Dagger engine" in log
    assert "not pinned by digest" in log
    (sent,) = [q for q in engine_double.queries if "withExec" in q]
    assert 'from(address: "python:3.12-slim")' in sent
    assert "readOnly: true" in sent  # the agent directory is mounted read-only


async def test_open_executor_knows_the_dagger_kind() -> None:
    executor = open_executor("dagger", connect_timeout=5)
    assert isinstance(executor, DaggerExecutor)
    assert executor.name == "dagger"


# -- connecting -------------------------------------------------------------------------------
@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: an engine that hangs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield int(server.getsockname()[1])


async def test_connecting_has_a_deadline(silent_port: int, tmp_path: Path, workspace: Path) -> None:
    executor = DaggerExecutor(session_port=silent_port, session_token="t", connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(ExecutorUnavailable, match="1s connect deadline"):
        await run(executor, make_agent(tmp_path / "agent", ECHO), workspace)
    health = await executor.health()
    assert not health.ok
    assert "connect deadline" in health.detail
    assert time.monotonic() - started < 10


def fake_cli(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cli = folder / "dagger"
    cli.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    cli.chmod(0o755)
    return cli


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_a_cli_session_that_never_starts_hits_the_deadline_and_is_ended(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGGER_SESSION_PORT", raising=False)
    pidfile = tmp_path / "session.pid"
    cli = fake_cli(tmp_path / "bin", f"echo $$ > {pidfile}\ncat > /dev/null\n")
    executor = DaggerExecutor(cli=str(cli), connect_timeout=1)
    with pytest.raises(ExecutorUnavailable, match="connect deadline"):
        await run(executor, make_agent(tmp_path / "agent", ECHO), workspace)
    assert not alive(int(pidfile.read_text()))


async def test_a_cli_session_is_started_with_the_remote_engine_setting(
    engine_double: EngineDouble,
    tmp_path: Path,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DAGGER_SESSION_PORT", raising=False)
    monkeypatch.setenv("_EXPERIMENTAL_DAGGER_RUNNER_HOST", "tcp://dagger-engine.internal:1234")
    seen, pidfile = tmp_path / "seen.txt", tmp_path / "session.pid"
    params = json.dumps({"port": engine_double.port, "session_token": engine_double.token})
    cli = fake_cli(
        tmp_path / "bin",
        f"""\
        echo $$ > {pidfile}
        echo "$* runner-host=$_EXPERIMENTAL_DAGGER_RUNNER_HOST" > {seen}
        echo '{params}'
        cat > /dev/null
        """,
    )
    executor = DaggerExecutor(cli=str(cli), connect_timeout=10)
    health = await executor.health()
    assert health.ok, health.detail
    assert "on tcp://dagger-engine.internal:1234" in health.detail
    assert seen.read_text().startswith("session --label dagger.io/sdk.name:python")
    assert "runner-host=tcp://dagger-engine.internal:1234" in seen.read_text()
    result, log = await run(executor, make_agent(tmp_path / "agent", ECHO), workspace)
    assert result.ok, log
    await executor.aclose()  # closes the session's stdin: `dagger session` ends
    assert not alive(int(pidfile.read_text()))


async def test_without_a_session_or_a_cli_it_is_unavailable_and_downloads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DAGGER_SESSION_PORT", "DAGGER_SESSION_TOKEN", "_EXPERIMENTAL_DAGGER_CLI_BIN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    health = await DaggerExecutor(connect_timeout=5).health()
    assert not health.ok
    assert "no Dagger engine session" in health.detail
    assert "download" in health.detail


async def test_attach_mode_reads_the_session_from_the_environment(
    engine_double: EngineDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in engine_double.env().items():
        monkeypatch.setenv(key, value)
    health = await DaggerExecutor().health()
    assert health.ok, health.detail
    assert f"attached to the session on 127.0.0.1:{engine_double.port}" in health.detail


async def test_health_is_a_version_query_and_follows_the_engine(
    dagger_executor: DaggerExecutor, engine_double: EngineDouble
) -> None:
    health = await dagger_executor.health()
    assert health.ok
    assert "v0.21.11" in health.detail
    assert health.sandboxed
    engine_double.stop()
    down = await dagger_executor.health()
    assert not down.ok
    engine_double.start()
    assert (await dagger_executor.health()).ok  # connects again by itself


async def test_a_slow_version_answer_is_unhealthy_without_dropping_the_session(
    engine_double: EngineDouble, tmp_path: Path, workspace: Path
) -> None:
    executor = attached(engine_double, health_timeout=0.5)
    assert (await executor.health()).ok
    engine_double.version_delay = 3
    slow = await executor.health()
    assert not slow.ok
    assert "did not answer within 0.5s" in slow.detail
    engine_double.version_delay = 0
    introspections = len([q for q in engine_double.queries if "__schema" in q])
    result, log = await run(executor, make_agent(tmp_path / "agent", ECHO), workspace)
    assert result.ok, log
    assert len([q for q in engine_double.queries if "__schema" in q]) == introspections
    await executor.aclose()


# -- never twice, errors as the runner's own --------------------------------------------------
async def test_a_slow_step_hits_the_client_deadline_and_is_never_sent_twice(
    engine_double: EngineDouble, tmp_path: Path, workspace: Path
) -> None:
    engine_double.exec_delay = 60  # the engine takes the exec and does not answer
    executor = attached(engine_double, kill_grace=1, deadline_slack=1)
    started = time.monotonic()
    result, _ = await run(executor, make_agent(tmp_path / "agent", ECHO), workspace, limit=1)
    assert result.timed_out
    assert "it was not sent again" in (result.error or "")
    assert time.monotonic() - started < 15
    await anyio.sleep(1.5)
    assert len([q for q in engine_double.queries if "withExec" in q]) == 1
    await executor.aclose()


async def test_a_cancelled_step_ends_its_exec_on_the_engine(
    dagger_executor: DaggerExecutor, tmp_path: Path, workspace: Path
) -> None:
    """Cancelling the step (its task: the run was cancelled) drops the exec's query; the engine
    (the double as Dagger's) cancels the exec with it, and its processes end."""
    mark = str(7_000_000 + (os.getpid() * 7919 + time.monotonic_ns()) % 1_000_000)
    program = f'import os; os.execvp("sleep", ["sleep", "{mark}"])'
    agent = make_agent(tmp_path / "agent", program)
    async with anyio.create_task_group() as group:
        group.start_soon(functools.partial(run, dagger_executor, agent, workspace, limit=600))
        with anyio.fail_after(60):
            while not processes_with(mark):
                await anyio.sleep(0.1)
        group.cancel_scope.cancel()
    with anyio.fail_after(30):  # generously bounded: the exec would sleep for months
        while processes_with(mark):
            await anyio.sleep(0.1)


async def test_a_dropped_answer_is_an_engine_error_and_the_exec_is_not_sent_again(
    engine_double: EngineDouble, tmp_path: Path, workspace: Path
) -> None:
    engine_double.cut_exec_answers = 1
    executor = attached(engine_double)
    with pytest.raises(ExecutorUnavailable) as raised:
        await run(executor, make_agent(tmp_path / "agent", ECHO), workspace)
    assert type(raised.value) is ExecutorUnavailable  # never an SDK, gql or tenacity type
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__
    assert len([q for q in engine_double.queries if "withExec" in q]) == 1
    assert len(agent_execs(engine_double)) == 1
    await executor.aclose()


async def test_the_sdk_default_would_send_a_dropped_exec_again(
    engine_double: EngineDouble,
) -> None:
    """Why retries are off: with the SDK's default configuration, the same dropped answer
    makes it send the exec again (the double sees it twice)."""
    import dagger
    from dagger.client._config import ConnectConfig
    from dagger.client._core import Context
    from dagger.client._session import ConnectParams, SingleConnection

    conn = SingleConnection(
        ConnectParams(port=engine_double.port, session_token=engine_double.token),
        ConnectConfig(),
    )
    await conn.connect()
    try:
        engine_double.cut_exec_answers = 1
        client = dagger.Client(Context(conn=conn))
        ctr = client.container().from_("python:3.12-slim").with_exec(["true"])
        with anyio.fail_after(60):
            await ctr.exit_code()
    finally:
        await conn.close()
    assert len([q for q in engine_double.queries if "withExec" in q]) == 2


async def test_the_engine_lost_mid_step_is_transient_and_the_next_step_reconnects(
    dagger_executor: DaggerExecutor,
    engine_double: EngineDouble,
    tmp_path: Path,
    workspace: Path,
) -> None:
    engine_double.exec_delay = 60
    threading.Timer(1.0, engine_double.stop).start()
    with pytest.raises(ExecutorUnavailable, match="Dagger engine unreachable") as raised:
        await run(dagger_executor, make_agent(tmp_path / "agent", ECHO), workspace)
    assert type(raised.value) is ExecutorUnavailable
    engine_double.exec_delay = 0
    engine_double.start()
    result, log = await run(dagger_executor, make_agent(tmp_path / "agent", ECHO), workspace)
    assert result.ok, log


async def test_a_wrong_session_token_is_an_engine_error(
    engine_double: EngineDouble, tmp_path: Path, workspace: Path
) -> None:
    executor = DaggerExecutor(session_port=engine_double.port, session_token="not-the-token")
    with pytest.raises(ExecutorUnavailable, match="401") as raised:
        await run(executor, make_agent(tmp_path / "agent", ECHO), workspace)
    assert type(raised.value) is ExecutorUnavailable


async def test_a_registry_outage_is_transient_and_a_missing_image_fails_the_step(
    dagger_executor: DaggerExecutor,
    engine_double: EngineDouble,
    tmp_path: Path,
    workspace: Path,
) -> None:
    agent = make_agent(tmp_path / "agent", ECHO)
    engine_double.pull_errors["python:3.12-slim"] = (
        "failed to do request: Head https://registry-1.docker.io/v2/: dial tcp: i/o timeout"
    )
    with pytest.raises(ExecutorUnavailable, match="i/o timeout"):
        await run(dagger_executor, agent, workspace)
    engine_double.pull_errors["python:3.12-slim"] = "docker.io/library/python:3.12-slim: not found"
    result, log = await run(dagger_executor, agent, workspace)
    assert not result.ok
    assert result.exit_code is None
    assert "the Dagger engine refused the step" in (result.error or "")
    assert "not found" in log


async def test_a_disallowed_image_is_refused_before_anything_reaches_the_engine(
    engine_double: EngineDouble, tmp_path: Path, workspace: Path
) -> None:
    executor = attached(engine_double, allowed_registries=["ghcr.io/acme"])
    result, log = await run(executor, make_agent(tmp_path / "agent", ECHO), workspace)
    assert not result.ok
    assert "not from an allowed registry" in (result.error or "")
    assert "not from an allowed registry" in log
    assert engine_double.queries == []


# -- secrets ----------------------------------------------------------------------------------
async def test_secrets_stay_out_of_logs_and_out_of_every_printed_query(
    dagger_executor: DaggerExecutor,
    engine_double: EngineDouble,
    tmp_path: Path,
    workspace: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # gql, httpx, httpcore and dagger at their most talkative
    secret = "tok-9f8e7d6c5b4a3210"
    program = """
    import json, os
    print("token is", os.environ["API_TOKEN"])
    print("undeclared:", os.environ.get("OTHER_SECRET"))
    output = {"answer": 1, "echo": os.environ["API_TOKEN"]}
    json.dump(output, open(os.environ["RUNNER_OUTPUT"], "w"))
    """
    result, log = await run(
        dagger_executor,
        make_agent(tmp_path / "agent", program, secrets=("API_TOKEN",)),
        workspace,
        secrets={"API_TOKEN": secret, "OTHER_SECRET": "other-5e4d3c2b1a"},
    )
    assert result.ok, log
    assert "token is ***" in log
    assert "undeclared: None" in log
    assert result.outputs == {"answer": 1, "echo": "***"}
    assert secret not in log
    assert secret not in caplog.text
    assert engine_double.queries
    assert not [q for q in engine_double.queries if secret in q]
    # it did reach the engine: as a GraphQL variable of setSecret, nowhere else
    assert [v for v in engine_double.variables if secret in json.dumps(v)] == [
        {"name": "runner/7/probe/1/API_TOKEN", "plaintext": secret}
    ]
    assert "other-5e4d3c2b1a" not in json.dumps(engine_double.variables)


# -- caching, workspace, limits ---------------------------------------------------------------
async def test_a_rerun_really_runs_and_requirements_are_installed_once(
    dagger_executor: DaggerExecutor,
    engine_double: EngineDouble,
    tmp_path: Path,
    workspace: Path,
) -> None:
    agent = make_agent(tmp_path / "agent", ECHO)
    (tmp_path / "agent" / "requirements.txt").write_text("httpx>=0.27\n")
    first, log = await run(dagger_executor, agent, workspace)
    second, _ = await run(dagger_executor, agent, workspace)
    assert first.ok, log
    assert second.ok
    assert len(agent_execs(engine_double)) == 2  # same step, same inputs: ran twice
    assert len([a for a in engine_double.execs if "pip" in a]) == 1  # the engine's cache
    sent = [q for q in engine_double.queries if "withExec" in q and "RUNNER_CACHE_BUSTER" in q]
    busters = {b for q in sent for b in re.findall(r'"7/probe/1/([0-9a-f]{32})"', q)}
    assert len(sent) == 2
    assert len(busters) == 2


def mtimes(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


async def test_workspace_changes_come_back_and_an_untouched_workspace_is_left_alone(
    dagger_executor: DaggerExecutor, tmp_path: Path, workspace: Path
) -> None:
    (workspace / "old.txt").write_text("old")
    (workspace / "keep").mkdir()
    (workspace / "keep" / "x.txt").write_text("x")
    before = mtimes(workspace)
    reader, log = await run(dagger_executor, make_agent(tmp_path / "reader", ECHO), workspace)
    assert reader.ok, log
    assert "exported back" not in log
    assert mtimes(workspace) == before

    program = """
    import json, os, pathlib
    ws = pathlib.Path(os.environ["RUNNER_WORKSPACE"])
    (ws / "README.md").write_text("changed\\n")
    (ws / "old.txt").unlink()
    (ws / "new" / "deep").mkdir(parents=True)
    (ws / "new" / "deep" / "file.txt").write_text("new")
    json.dump({"answer": 1}, open(os.environ["RUNNER_OUTPUT"], "w"))
    """
    writer, log = await run(dagger_executor, make_agent(tmp_path / "writer", program), workspace)
    assert writer.ok, log
    assert "changes exported back" in log
    assert (workspace / "README.md").read_text() == "changed\n"
    assert not (workspace / "old.txt").exists()
    assert (workspace / "new" / "deep" / "file.txt").read_text() == "new"
    assert (workspace / "keep" / "x.txt").read_text() == "x"


async def test_a_git_workspace_borrowing_objects_works_in_the_container(
    dagger_executor: DaggerExecutor, tmp_path: Path
) -> None:
    """runner.workspace checkouts borrow the mirror's objects (git alternates): the executor
    mounts those read-only at the same path, so git works inside and a commit comes back."""
    origin = tmp_path / "origin"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", str(origin)], check=True)
    (origin / "a.txt").write_text("a\n")
    subprocess.run([*git, "-C", str(origin), "add", "a.txt"], check=True)
    subprocess.run([*git, "-C", str(origin), "commit", "-qm", "a"], check=True)
    sha = subprocess.run(
        ["git", "-C", str(origin), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    spaces = Workspaces(tmp_path / "data" / "workspaces")
    checkout = await spaces.prepare(1, {"clone_url": str(origin), "sha": sha})
    program = """
    import json, os, subprocess
    ws = os.environ["RUNNER_WORKSPACE"]
    git = ["git", "-c", "user.name=agent", "-c", "user.email=a@a", "-C", ws]
    print(subprocess.run([*git, "log", "--oneline"], capture_output=True, text=True).stdout)
    open(os.path.join(ws, "b.txt"), "w").write("b\\n")
    subprocess.run([*git, "add", "b.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "b"], check=True)
    json.dump({"answer": 1}, open(os.environ["RUNNER_OUTPUT"], "w"))
    """
    result, log = await run(dagger_executor, make_agent(tmp_path / "agent", program), checkout)
    assert result.ok, log
    done = subprocess.run(
        ["git", "-C", str(checkout), "log", "--format=%s"], capture_output=True, text=True
    )
    assert done.stdout.split() == ["b", "a"]


async def test_killed_by_a_signal_is_a_result_not_an_error(
    dagger_executor: DaggerExecutor, tmp_path: Path, workspace: Path
) -> None:
    program = """
    import os, signal
    print("dying", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
    result, log = await run(dagger_executor, make_agent(tmp_path / "agent", program), workspace)
    assert result.exit_code == 137
    assert not result.timed_out
    assert "killed by signal 9" in (result.error or "")
    assert "dying" in log


async def test_a_broken_requirements_file_fails_the_step(
    dagger_executor: DaggerExecutor, tmp_path: Path, workspace: Path
) -> None:
    agent = make_agent(tmp_path / "agent", ECHO)
    (tmp_path / "agent" / "requirements.txt").write_text("this is not ! a requirement\n")
    result, log = await run(dagger_executor, agent, workspace)
    assert not result.ok
    assert result.error == "installing the agent's requirements.txt failed (pip exited with code 1)"
    assert "this is not" in log


async def test_an_oversized_output_is_refused(
    dagger_executor: DaggerExecutor, engine_double: EngineDouble, tmp_path: Path, workspace: Path
) -> None:
    executor = attached(engine_double, max_output_bytes=100)
    program = """
    import json, os
    json.dump({"answer": 1, "pad": "x" * 500}, open(os.environ["RUNNER_OUTPUT"], "w"))
    """
    result, _ = await run(executor, make_agent(tmp_path / "agent", program), workspace)
    assert not result.ok
    assert "at most 100" in (result.error or "")
    await executor.aclose()


# -- end to end -------------------------------------------------------------------------------
def test_pr_security_review_end_to_end_with_runner_executor_dagger(
    engine_double: EngineDouble, tmp_path: Path
) -> None:
    """`RUNNER_EXECUTOR_KIND=dagger runner run pr-security-review`, attached to the double."""
    sample = tmp_path / "sample-app"
    subprocess.run([str(ROOT / "examples" / "make-sample-repo.sh"), str(sample)], check=True)
    env = {
        **os.environ,
        **engine_double.env(),
        "RUNNER_EXECUTOR_KIND": "dagger",
        "RUNNER_DATABASE_URL": f"sqlite:///{tmp_path}/runner.db",
        "RUNNER_DATA_DIR": str(tmp_path / "data"),
    }

    def runner(*args: str, user: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runner", *args],
            cwd=tmp_path,
            env={**env, "RUNNER_USER": user},
            capture_output=True,
            text=True,
            timeout=600,
        )

    repo = str(ROOT / "workflows-repo-example")
    started = runner(
        "run", "pr-security-review", "--repo", repo, "--workspace", str(sample), user="dev"
    )
    assert started.returncode == 3, started.stdout + started.stderr
    approved = runner("approve", "1", user="alice")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "run 1: succeeded" in approved.stdout
    shown = json.loads(runner("show", "1", "--output", "json", user="dev").stdout)
    steps = {s["id"]: s for s in shown["steps"]}
    assert {s["status"] for s in steps.values()} == {"succeeded"}
    assert "src/shop/settings.py" in steps["patch"]["outputs"]["files"]
    logs = runner("logs", "1", user="dev").stdout
    assert "on the Dagger engine" in logs
    assert "AKIAIOSFODNN7EXAMPLE" not in logs  # (the patch's diff context shows it, as locally)
    assert len(agent_execs(engine_double)) == 5


# -- a real engine ----------------------------------------------------------------------------
async def test_a_step_on_a_real_dagger_engine(tmp_path: Path, workspace: Path) -> None:
    cli = shutil.which("dagger")
    if cli is None:
        pytest.skip(
            "no real Dagger engine here: no `dagger` CLI on PATH (this test also needs a "
            "container engine: docker, podman or nerdctl, or _EXPERIMENTAL_DAGGER_RUNNER_HOST)"
        )
    engines = [shutil.which(c) for c in ("docker", "podman", "nerdctl")]
    if not any(engines) and not os.environ.get("_EXPERIMENTAL_DAGGER_RUNNER_HOST"):
        pytest.skip(
            "no container engine for the dagger CLI to start its engine in (docker, podman "
            "or nerdctl), and no _EXPERIMENTAL_DAGGER_RUNNER_HOST naming a running one"
        )
    executor = DaggerExecutor(cli=cli, connect_timeout=600, deadline_slack=900)
    try:
        health = await executor.health()
        assert health.ok, health.detail
        result, log = await run(
            executor, make_agent(tmp_path / "agent", ECHO), workspace, limit=300
        )
        assert result.ok, log
        assert result.outputs == {"answer": 42}
        program = "import time; time.sleep(60)"
        slow, log = await run(executor, make_agent(tmp_path / "slow", program), workspace, limit=2)
        assert slow.timed_out, log
    finally:
        await executor.aclose()
