"""What every executor must do, run against each one: local sandboxed, local unsandboxed, and
the Dagger executor through the real dagger-io SDK attached to the engine DOUBLE
(tests/executors/dagger_double.py), the only engine these machines can run."""

from __future__ import annotations

import os
import socket
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from runner.executors import pids
from runner.executors.base import Executor, StepResult, StepSpec
from runner.executors.local import LocalExecutor, find_bwrap
from runner.model import Agent

pytestmark = pytest.mark.anyio

OUTPUTS = {
    "type": "object",
    "required": ["answer"],
    "properties": {"answer": {"type": "integer"}},
}


@pytest.fixture(params=["local-sandboxed", "local-unsandboxed", "dagger-on-engine-double"])
def executor(request: pytest.FixtureRequest) -> Executor:
    if request.param == "dagger-on-engine-double":
        found: Executor = request.getfixturevalue("dagger_executor")
        return found
    if request.param == "local-sandboxed":
        path, reason = find_bwrap()
        if path is None:
            pytest.skip(f"no sandbox on this host: {reason}")
        return LocalExecutor(sandbox=True)
    return LocalExecutor(sandbox=False)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    (path / "README.md").write_text("hello\n")
    return path


def agent(tmp_path: Path, program: str, **spec: object) -> Agent:
    folder = tmp_path / "agent"
    folder.mkdir(exist_ok=True)
    (folder / "main.py").write_text(textwrap.dedent(program))
    fields: dict[str, object] = {
        "name": "probe",
        "command": ("python", "main.py"),
        "directory": str(folder),
        "source": "test",
        "digest": "d",
        "outputs": OUTPUTS,
    }
    fields.update(spec)
    return Agent(**fields)  # type: ignore[arg-type]


async def run(
    executor: Executor,
    agent: Agent,
    workspace: Path,
    *,
    limit: float = 60,
    run_id: int = 1,
    **extra: object,
) -> tuple[StepResult, str]:
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(data)

    step = StepSpec(
        run_id=run_id,
        step_id="probe",
        attempt=1,
        agent=agent,
        inputs={"n": 41},
        workspace=workspace,
        timeout=limit,
        **extra,  # type: ignore[arg-type]
    )
    result = await executor.run_step(step, sink)
    return result, b"".join(chunks).decode()


ECHO = """
import json, os
inputs = json.load(open(os.environ["RUNNER_INPUT"]))
print("reading", os.environ["RUNNER_WORKSPACE"])
print("workspace has", sorted(os.listdir(os.environ["RUNNER_WORKSPACE"])))
json.dump({"answer": inputs["n"] + 1}, open(os.environ["RUNNER_OUTPUT"], "w"))
"""


async def test_success_with_valid_output(
    executor: Executor, tmp_path: Path, workspace: Path
) -> None:
    result, log = await run(executor, agent(tmp_path, ECHO), workspace)
    assert result.ok
    assert result.outputs == {"answer": 42}
    assert "workspace has ['README.md']" in log


async def test_nonzero_exit_is_a_failed_result(
    executor: Executor, tmp_path: Path, workspace: Path
) -> None:
    result, log = await run(
        executor, agent(tmp_path, "import sys; print('bad'); sys.exit(3)"), workspace
    )
    assert not result.ok
    assert result.exit_code == 3
    assert result.error == "the agent exited with code 3"
    assert "bad" in log


async def test_output_is_checked_against_the_schema(
    executor: Executor, tmp_path: Path, workspace: Path
) -> None:
    program = (
        'import json, os; json.dump({"answer": "many"}, open(os.environ["RUNNER_OUTPUT"], "w"))'
    )
    result, log = await run(executor, agent(tmp_path, program), workspace)
    assert not result.ok
    assert result.outputs is None
    assert "/answer: expected integer, got string" in (result.error or "")
    assert "does not match its outputs schema" in log


async def test_missing_output_is_a_failure(
    executor: Executor, tmp_path: Path, workspace: Path
) -> None:
    result, _ = await run(executor, agent(tmp_path, "print('forgot')"), workspace)
    assert result.error == "the agent wrote no output: write one JSON object to $RUNNER_OUTPUT"


async def test_environment_is_cleared_and_secrets_are_masked(
    executor: Executor, tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_TEST_LEAK", "from-the-runner")
    program = """
    import json, os
    print("leak:", os.environ.get("RUNNER_TEST_LEAK"))
    print("token is", os.environ["API_TOKEN"])
    print("undeclared:", os.environ.get("OTHER_SECRET"))
    output = {"answer": 1, "echo": os.environ["API_TOKEN"]}
    json.dump(output, open(os.environ["RUNNER_OUTPUT"], "w"))
    """
    result, log = await run(
        executor,
        agent(tmp_path, program, secrets=("API_TOKEN",)),
        workspace,
        secrets={"API_TOKEN": "tok-3f9a8b7c6d", "OTHER_SECRET": "other-5e4d3c2b"},
    )
    assert result.ok, log
    assert "leak: None" in log
    assert "token is ***" in log
    assert "tok-3f9a8b7c6d" not in log
    assert "undeclared: None" in log
    assert result.outputs == {"answer": 1, "echo": "***"}


async def test_the_workspace_cannot_shadow_a_python_tool_but_the_agents_folder_imports(
    executor: Executor, tmp_path: Path, workspace: Path
) -> None:
    """A project's ruff.py in the workspace is not what `python -m ruff` run there imports;
    the agent's own helper module beside main.py still imports."""
    (workspace / "tool.py").write_text("print('the project ran inside the agent')\n")
    program = """
    import json, os, subprocess, sys
    import helper
    ran = subprocess.run([sys.executable, "-m", "tool"], cwd=os.environ["RUNNER_WORKSPACE"],
                         capture_output=True, text=True)
    print(ran.stdout, ran.stderr)
    json.dump({"answer": helper.ANSWER}, open(os.environ["RUNNER_OUTPUT"], "w"))
    """
    folder = agent(tmp_path, program)
    (Path(folder.directory) / "helper.py").write_text("ANSWER = 42\n")
    result, log = await run(executor, folder, workspace)
    assert result.ok, log
    assert result.outputs == {"answer": 42}
    assert "No module named tool" in log
    assert "the project ran" not in log


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line holds `marker` (zombies waiting for a reaper excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


async def test_timeout_kills_the_whole_process_tree(
    executor: Executor, tmp_path: Path, workspace: Path
) -> None:
    marker = str(3000 + os.getpid() % 1000)  # `sleep <marker>`: findable in /proc afterwards
    program = f"""
    import subprocess, time
    subprocess.Popen(["sleep", "{marker}"])
    subprocess.Popen(["sh", "-c", "sleep {marker}"])
    print("started", flush=True)
    time.sleep(300)
    """
    started = time.monotonic()
    result, log = await run(executor, agent(tmp_path, program), workspace, limit=2)
    assert result.timed_out
    assert "timed out after 2s" in log
    assert time.monotonic() - started < 60
    time.sleep(0.3)
    assert processes_with(marker) == []


ESCAPES = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
# out of the process group and the session, holding the log pipe open
subprocess.Popen(["setsid", "sleep", "{marker}"])
child = os.fork()
if child == 0:  # a double fork: the grandchild's parent is gone, its session its own
    os.setsid()
    if os.fork() == 0:
        deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(1e6)"
        os.execv(sys.executable, [sys.executable, "-c", deaf, "{marker}"])
    os._exit(0)
os.waitpid(child, 0)
print("escaped", flush=True)
{end}
"""


@pytest.mark.parametrize("ending", ["timeout", "exit", "cancel"])
@pytest.mark.parametrize("sandbox", [False, True], ids=["unsandboxed", "sandboxed"])
async def test_processes_that_escape_the_session_end_with_the_step_even_without_a_cgroup(
    tmp_path: Path, workspace: Path, ending: str, sandbox: bool
) -> None:
    """The local executor, without the cgroup of the process-count limit, when the step times
    out, exits or is cancelled (its task: the run was cancelled). Dagger: test_dagger.py."""
    if sandbox and find_bwrap()[0] is None:
        pytest.skip(f"no sandbox on this host: {find_bwrap()[1]}")
    executor = LocalExecutor(sandbox=sandbox)
    executor.pids = pids.Unlimited("this test leaves the cgroup out")
    marker = str(5_000_000 + (os.getpid() * 7919 + time.monotonic_ns()) % 1_000_000)
    end = "time.sleep(1e6)"
    if ending == "exit":
        end = "open(os.environ['RUNNER_OUTPUT'], 'w').write('{}')"
    program = ESCAPES.format(marker=marker, end=end)
    probe = agent(tmp_path, program, outputs=None)
    if ending == "cancel":
        async with anyio.create_task_group() as group:
            group.start_soon(run, executor, probe, workspace)
            with anyio.fail_after(60):
                while len(processes_with(marker)) < 2:
                    await anyio.sleep(0.05)
            group.cancel_scope.cancel()
    else:
        result, log = await run(executor, probe, workspace, limit=3)
        assert "escaped" in log
        assert result.timed_out == (ending == "timeout"), result
    assert processes_with(marker) == []


async def test_memory_is_capped(executor: Executor, tmp_path: Path, workspace: Path) -> None:
    program = """
    import json, os
    try:
        hog = bytearray(600 * 1024 * 1024)
        print("allocated")
    except MemoryError:
        print("refused")
        raise SystemExit(9)
    json.dump({"answer": 1}, open(os.environ["RUNNER_OUTPUT"], "w"))
    """
    result, log = await run(executor, agent(tmp_path, program, memory="256Mi"), workspace)
    assert not result.ok
    assert "allocated" not in log


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield int(server.getsockname()[1])


CONNECT = """
import json, os, socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
    reached = True
except OSError:
    reached = False
print("reached:", reached)
json.dump({{"answer": int(reached)}}, open(os.environ["RUNNER_OUTPUT"], "w"))
"""


async def test_no_network_unless_declared(
    executor: Executor, tmp_path: Path, workspace: Path, listener: int
) -> None:
    closed, log = await run(executor, agent(tmp_path, CONNECT.format(port=listener)), workspace)
    opened, _ = await run(
        executor, agent(tmp_path, CONNECT.format(port=listener), network=True), workspace
    )
    assert opened.outputs == {"answer": 1}
    health = await executor.health()
    if executor.name == "dagger":  # the engine gives containers network; the step log says so
        assert closed.outputs == {"answer": 1}
        assert "network: false is not enforced" in log
    elif health.sandboxed:
        assert closed.outputs == {"answer": 0}
    else:  # no isolation without a sandbox, and the step log says so
        assert closed.outputs == {"answer": 1}
        assert "running unsandboxed" in log


FORKS = """
import json, os, time
children = []
for _ in range(60):
    try:
        pid = os.fork()
    except BlockingIOError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print("started", len(children))
json.dump({"answer": len(children)}, open(os.environ["RUNNER_OUTPUT"], "w"))
"""


async def test_process_count_is_limited(
    executor: Executor, tmp_path: Path, workspace: Path
) -> None:
    result, log = await run(executor, agent(tmp_path, FORKS, pids=20), workspace)
    assert result.ok, log
    assert result.outputs is not None
    if isinstance(executor, LocalExecutor) and not executor.pids.why_not:
        assert 0 < result.outputs["answer"] < 20
    elif isinstance(executor, LocalExecutor):  # no mechanism here, and the step log says so
        assert "resources.pids is not enforced" in log
    else:  # Dagger's API has no pids limit; the step log says so
        assert "resources.pids (20) is not enforced by the Dagger executor" in log
