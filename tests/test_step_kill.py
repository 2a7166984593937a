"""Steps that time out or are cancelled end, with every process they started, whatever those
processes do: `runner serve` running a committed workflow from a real git repository, agents
that detach (`setsid sleep &`) or double-fork and ignore SIGTERM, sandboxed and not; a cancel
through the API of another process, on SQLite and PostgreSQL; scratch folders a killed node left
behind swept at the next start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner.executors.sandbox import find_bwrap
from tests.executors.test_conformance import processes_with
from tests.gitserver import git_server
from tests.source.test_reconciler import Repo
from tests.test_serve import free_port, runner, wait_for
from tests.web.service import serve

TOKEN = "operator-t0ken-kill0000"
API = "api: {tokens: [{name: ops, role: operator, token_env: T_OPS}]}\n"
ENV = {"T_OPS": TOKEN}

# a child that leaves the process group and the session, holding the log pipe open
DETACHES = """\
apiVersion: runner/v1
kind: Agent
metadata: {{name: detaches}}
spec: {{command: [sh, -c, "setsid sleep {marker} & echo detached; sleep {marker}"]}}
"""
# a grandchild in a session of its own whose parent is gone, all of them deaf to SIGTERM
DOUBLE_FORK_MAIN = """\
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = os.fork()
if child == 0:
    os.setsid()
    if os.fork() == 0:
        deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(1e6)"
        os.execv(sys.executable, [sys.executable, "-c", deaf, "{marker}"])
    os._exit(0)
os.waitpid(child, 0)  # the grandchild is on its own now
print("forked", flush=True)
time.sleep(1e6)
"""
DOUBLE_FORK = """\
apiVersion: runner/v1
kind: Agent
metadata: {name: double-fork}
spec: {command: [python, main.py]}
"""
WORKFLOW = """\
apiVersion: runner/v1
kind: Workflow
metadata: {{name: {name}}}
spec:
  triggers: [{{manual: {{}}}}]
  steps:
{steps}
"""


def marker() -> str:
    """A number no other process has in its command line (sleep takes it as seconds)."""
    return str(7_000_000 + (os.getpid() * 7919 + time.monotonic_ns()) % 1_000_000)


def call(base: str, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    return httpx.request(method, base + path, headers=headers, timeout=10, **kw)


def start(base: str, workflow: str) -> int:
    started = call(base, "POST", f"/api/workflows/{workflow}/runs", json={})
    assert started.status_code == 201, started.text
    return int(started.json()["id"])


def run_of(base: str, run_id: int) -> dict[str, Any]:
    found: dict[str, Any] = call(base, "GET", f"/api/runs/{run_id}").json()
    return found


def steps_of(base: str, run_id: int) -> dict[str, dict[str, Any]]:
    return {step["id"]: step for step in run_of(base, run_id)["steps"]}


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    (tmp_path / "srv").mkdir()
    with git_server(tmp_path / "srv") as server:
        yield Repo(tmp_path, server)


def source(repo: Repo) -> str:
    return f"sources: [{{name: main, url: '{repo.url}', branch: main, interval: 1s}}]\n"


@pytest.mark.parametrize("sandbox", [False, True], ids=["unsandboxed", "sandboxed"])
def test_a_step_timeout_ends_every_process_of_the_step(
    tmp_path: Path, repo: Repo, sandbox: bool
) -> None:
    if sandbox and find_bwrap()[0] is None:
        pytest.skip(f"no sandbox on this host: {find_bwrap()[1]}")
    mark = marker()
    steps = (
        "    - {id: detached, agent: detaches, timeout: 3s}\n"
        "    - {id: forked, agent: double-fork, timeout: 3s}\n"
    )
    repo.commit(
        {
            "agents/detaches/agent.yaml": DETACHES.format(marker=mark),
            "agents/double-fork/agent.yaml": DOUBLE_FORK,
            "agents/double-fork/main.py": DOUBLE_FORK_MAIN.replace("{marker}", mark),
            "workflows/stuck.yaml": WORKFLOW.format(name="stuck", steps=steps),
        }
    )
    home = tmp_path / "home"
    home.mkdir()
    config = f"{API}{source(repo)}executor: {{sandbox: {str(sandbox).lower()}}}\n"
    with serve(home, config, ENV, role="all", ready=True) as base:
        run_id = start(base, "stuck")
        # the timeouts end the run (generously bounded: the detached child holding the log pipe
        # open kept it running for good before) ...
        wait_for(lambda: run_of(base, run_id)["status"] == "failed", timeout=120)
        steps = steps_of(base, run_id)
        for step, said in (("detached", "detached"), ("forked", "forked")):
            assert steps[step]["status"] == "failed"
            assert steps[step]["error"] == "timed out after 3s; the agent's processes were killed"
            log = call(base, "GET", f"/api/runs/{run_id}/steps/{step}/log").text
            assert said in log  # the escaped process was started before the timeout
            assert "[runner] timed out after 3s; the agent's processes were killed" in log
        # ... and none of their processes outlives them
        assert processes_with(mark) == []
        # nothing is left of the steps' scratch either
        assert list((home / ".runner" / "steps").iterdir()) == []


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_cancel_from_another_process_ends_the_running_step(
    tmp_path: Path, repo: Repo, database: str, request: pytest.FixtureRequest
) -> None:
    """The lease is ten minutes: the heartbeat (every third of it) cannot be what delivers the
    cancel; the node that runs the step learns it from the store."""
    if database == "sqlite":
        url = f"sqlite:///{tmp_path}/shared.db"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    mark = marker()
    repo.commit(
        {
            "agents/detaches/agent.yaml": DETACHES.format(marker=mark),
            "workflows/long.yaml": WORKFLOW.format(
                name="long", steps="    - {id: sleeps, agent: detaches, timeout: 30m}\n"
            ),
        }
    )
    worker_home, web_home = tmp_path / "worker", tmp_path / "web"
    worker_home.mkdir()
    web_home.mkdir()
    shared = f"database: {{url: '{url}'}}\n"
    worker = f"{API}{shared}{source(repo)}executor: {{sandbox: false, lease: 10m}}\n"
    with (
        serve(worker_home, worker, ENV, role="all", ready=True) as runs_steps,
        serve(web_home, f"{API}{shared}", ENV, role="web") as web,
    ):
        run_id = start(runs_steps, "long")
        wait_for(lambda: len(processes_with(mark)) >= 2, timeout=60)
        assert steps_of(web, run_id)["sleeps"]["status"] == "running"
        cancelled = call(web, "POST", f"/api/runs/{run_id}/cancel")
        assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
        # generously bounded, far below the heartbeat's 200 s
        wait_for(lambda: processes_with(mark) == [], timeout=60)
        wait_for(lambda: steps_of(web, run_id)["sleeps"]["status"] == "cancelled", timeout=60)
        assert run_of(web, run_id)["status"] == "cancelled"


def test_scratch_folders_a_killed_node_left_are_swept_at_its_next_start(
    tmp_path: Path, repo: Repo
) -> None:
    mark = marker()
    repo.commit(
        {
            "agents/detaches/agent.yaml": DETACHES.format(marker=mark),
            "workflows/long.yaml": WORKFLOW.format(
                name="long", steps="    - {id: sleeps, agent: detaches, timeout: 30m}\n"
            ),
        }
    )
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    (home / "runner.yaml").write_text(
        f"listen: {{port: {port}}}\n{API}{source(repo)}executor: {{sandbox: false}}\n"
    )
    base = f"http://127.0.0.1:{port}"
    scratch = home / ".runner" / "steps"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def node() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "runner", "serve"],
            cwd=home,
            env={**os.environ, **ENV},
            stderr=subprocess.DEVNULL,
            text=True,
        )

    first = node()
    try:
        wait_for(ready, timeout=60)
        start(base, "long")
        wait_for(lambda: len(processes_with(mark)) >= 2, timeout=60)
        (left,) = scratch.iterdir()
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert left.exists()  # a killed node leaves its step's scratch behind ...
        # ... but not its processes: they go with it
        wait_for(lambda: processes_with(mark) == [], timeout=30)
    finally:
        first.kill()
        first.wait()
    second = node()
    try:
        wait_for(ready, timeout=60)
        assert not left.exists()
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    wait_for(lambda: processes_with(mark) == [], timeout=30)


def test_a_lease_too_short_for_its_heartbeat_is_refused_saying_what_to_write(
    tmp_path: Path,
) -> None:
    (tmp_path / "runner.yaml").write_text("executor: {lease: 1s}\n")
    done = runner(tmp_path, "runs")
    assert done.returncode == 2
    assert "executor.lease is 1s: it must be at least 3s" in done.stderr
    assert "Traceback" not in done.stderr
