"""A runner killed mid-run: a restarted one finishes the run once, from its last step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from runner.store.base import open_store
from tests.dag.conftest import ECHO, agent_yaml

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.anyio

WORKFLOW = """\
apiVersion: runner/v1
kind: Workflow
metadata: {{name: crash}}
spec:
  triggers: [{{manual: {{}}}}]
  steps:
    - {{id: first, agent: echo, with: {{count_file: "{count}", n: 1}}}}
    - id: slow
      agent: echo
      needs: [first]
      with: {{count_file: "{count}", hold_file: "{hold}"}}
    - {{id: last, agent: echo, needs: [slow], with: {{count_file: "{count}"}}}}
"""


def worker(db: Path, repo: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.dag.crash_worker", str(db), str(repo), mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_killed_runner_is_resumed_and_the_run_completes_once(tmp_path: Path) -> None:
    repo, db, count = tmp_path / "repo", tmp_path / "runner.db", tmp_path / "count.txt"
    (repo / "agents" / "echo").mkdir(parents=True)
    (repo / "agents" / "echo" / "agent.yaml").write_text(agent_yaml("echo"))
    (repo / "agents" / "echo" / "main.py").write_text(ECHO)
    (repo / "workflows").mkdir()
    hold = tmp_path / "hold"  # `slow` runs until this file is gone
    hold.touch()
    (repo / "workflows" / "crash.yaml").write_text(WORKFLOW.format(count=count, hold=hold))
    first = worker(db, repo, "start")
    store = open_store(f"sqlite:///{db}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "slow" not in (
        count.read_text() if count.exists() else ""
    ):
        await anyio.sleep(0.1)
    assert "slow" in count.read_text(), first.stderr.read() if first.stderr else ""
    os.kill(first.pid, signal.SIGKILL)  # mid-step: `slow` is sleeping in its agent
    first.wait(timeout=30)
    await store.open()
    try:
        (run,) = await store.list_runs()
        assert run.status == "running"
        statuses = {s.step_id: s.status for s in await store.get_steps(run.id)}
        assert statuses == {"first": "succeeded", "slow": "running"}
    finally:
        await store.close()

    hold.unlink()  # the rerun of `slow` finishes at once
    second = worker(db, repo, "resume")
    out, err = second.communicate(timeout=180)
    assert second.returncode == 0, err
    assert out.split() == ["succeeded"]
    assert count.read_text().splitlines() == ["first", "slow", "slow", "last"]
    await store.open()
    try:
        steps = {s.step_id: s for s in await store.get_steps(run.id)}
        assert steps["slow"].attempt == 2
        assert steps["first"].attempt == 1
        resumed = await store.read_log(run.id, "slow")
        assert b"the runner stopped during this step; running it again" in resumed.data
        assert len(await store.list_runs()) == 1
    finally:
        await store.close()
