"""An agent's program comes from the revision its run is pinned to, never from the folder a
command happens to run in: `runner approve`, continuing a run of a configured source in its own
process, must not run an `agents/<name>/main.py` of its working directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.source.test_reconciler import git
from tests.test_serve import free_port, wait_for

AGENT = """\
apiVersion: runner/v1
kind: Agent
metadata: {name: shipper}
spec: {command: [python, main.py]}
"""
REAL = "import json, os; json.dump({'who': 'pinned'}, open(os.environ['RUNNER_OUTPUT'], 'w'))\n"
DECOY = "import json, os; json.dump({'who': 'decoy'}, open(os.environ['RUNNER_OUTPUT'], 'w'))\n"
GATED = """\
apiVersion: runner/v1
kind: Workflow
metadata: {name: ship}
spec:
  triggers: [{manual: {}}]
  steps:
    - {id: go, agent: shipper, approval: {approvers: [alice]}}
"""
TOKEN = "ops-token-for-programs"


def test_runner_approve_runs_the_pinned_program_not_the_working_directorys(
    tmp_path: Path,
) -> None:
    source = tmp_path / "workflows"
    (source / "workflows").mkdir(parents=True)
    (source / "agents" / "shipper").mkdir(parents=True)
    (source / "workflows" / "ship.yaml").write_text(GATED)
    (source / "agents" / "shipper" / "agent.yaml").write_text(AGENT)
    (source / "agents" / "shipper" / "main.py").write_text(REAL)
    git(source, "init", "-q", "-b", "main")
    git(source, "add", "-A")
    git(source, "commit", "-q", "-m", "ship")
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    config = home / "runner.yaml"
    config.write_text(
        f"listen: {{port: {port}}}\ndatabase: {{url: 'sqlite:///{home}/runner.db'}}\n"
        f"data_dir: {home}/data\nexecutor: {{sandbox: false}}\n"
        f"sources: [{{name: main, url: '{source}', branch: main, interval: 1s}}]\n"
        "api: {tokens: [{name: ops, role: admin, token_env: OPS_TOKEN}]}\n"
    )
    env = {**os.environ, "OPS_TOKEN": TOKEN, "RUNNER_CONFIG": str(config)}
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    service = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve"], cwd=home, env=env, stderr=subprocess.DEVNULL
    )
    try:

        def applied() -> bool:
            try:
                return httpx.get(f"{base}/api/workflows/ship", headers=auth).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(applied)
        started = httpx.post(f"{base}/api/workflows/ship/runs", headers=auth, json={})
        assert started.status_code == 201, started.text
        run_id = started.json()["id"]
        wait_for(
            lambda: (
                httpx.get(f"{base}/api/runs/{run_id}", headers=auth).json()["status"]
                == "waiting_approval"
            )
        )
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)

    # Somewhere else, a folder holds an agent of the same name (a checkout of a PR branch).
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "agents" / "shipper").mkdir(parents=True)
    (elsewhere / "agents" / "shipper" / "main.py").write_text(DECOY)
    approved = subprocess.run(
        [sys.executable, "-m", "runner", "approve", str(run_id)],
        cwd=elsewhere,
        env={**env, "RUNNER_USER": "alice"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert approved.returncode == 0, approved.stdout + approved.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "runner", "show", str(run_id), "--output", "json"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    (step,) = json.loads(shown.stdout)["steps"]
    assert step["outputs"] == {"who": "pinned"}
