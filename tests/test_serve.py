"""`runner serve` as an operator runs it: a git source over HTTP, workers, health, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gitserver import GitServer, git_server
from tests.source.test_reconciler import Repo

ROOT = Path(__file__).parents[1]
ECHO = "import json, os; json.dump({'ok': True}, open(os.environ['RUNNER_OUTPUT'], 'w'))\n"
AGENT = (
    "apiVersion: runner/v1\nkind: Agent\nmetadata: {name: hello}\n"
    "spec: {command: [python, main.py]}\n"
)
MANUAL = """\
apiVersion: runner/v1
kind: Workflow
metadata: {{name: {name}}}
spec:
  triggers: [{{manual: {{}}}}]
  steps: [{{id: hi, agent: hello}}]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def runner(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_for(check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    (tmp_path / "srv").mkdir()
    with git_server(tmp_path / "srv") as running:
        yield running


def test_serve_applies_commits_runs_work_and_stops_cleanly(
    tmp_path: Path, server: GitServer
) -> None:
    repo = Repo(tmp_path, server)
    repo.commit(
        {
            "agents/hello/agent.yaml": AGENT,
            "agents/hello/main.py": ECHO,
            "workflows/a.yaml": MANUAL.format(name="a"),
        }
    )
    port = free_port()
    home = tmp_path / "svc"
    home.mkdir()
    (home / "runner.yaml").write_text(
        f"listen: {{port: {port}}}\n"
        f"sources: [{{name: main, url: '{repo.url}', branch: main, interval: 1s}}]\n"
        "executor: {sandbox: false}\n"
    )
    service = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve"], cwd=home, stderr=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready)
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}

        def workflows() -> list[str]:
            return [w["name"] for w in json.loads(runner(home, "workflows", "-o", "json").stdout)]

        assert workflows() == ["a"]
        repo.commit({"workflows/b.yaml": MANUAL.format(name="b")})
        wait_for(lambda: workflows() == ["a", "b"])  # within a poll interval or so

        repo.commit({"workflows/c.yaml": "apiVersion: runner/v1\nkind: Workflow\n"})

        def refused() -> bool:
            (status,) = json.loads(runner(home, "sources", "-o", "json").stdout)
            return bool(status["errors"])

        wait_for(refused)
        assert workflows() == ["a", "b"]  # the last good revision stays
        text = runner(home, "sources").stdout
        assert "workflows/c.yaml:1:1: missing required property 'metadata'" in text

        request = (
            "import asyncio\n"
            "from runner.model import RunRequest\n"
            "from runner.store.base import open_store\n"
            "async def main():\n"
            "    s = open_store('sqlite:///./runner.db'); await s.open()\n"
            "    (rev, _) = await s.applied_documents('main')\n"
            "    await s.request_run(RunRequest(workflow='a', source='main', revision=rev,\n"
            "                                   idempotency_key='t1'))\n"
            "    await s.close()\n"
            "asyncio.run(main())\n"
        )
        subprocess.run([sys.executable, "-c", request], cwd=home, check=True)

        def finished() -> bool:
            runs = json.loads(runner(home, "runs", "-o", "json").stdout)
            return bool(runs) and runs[0]["status"] == "succeeded"

        wait_for(finished)
    finally:
        os.kill(service.pid, signal.SIGTERM)
        _, err = service.communicate(timeout=60)
    assert service.returncode == 0, err
    assert "runner stopped" in err
