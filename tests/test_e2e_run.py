"""The demo a new user runs (`make run`), end to end through the real CLI: the sample app is
scanned, the run stops at the patcher's gate, its author may not approve it, alice may, and the
run finishes with a real commit and a notification."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pygit2

ROOT = Path(__file__).parents[1]


def runner(tmp: Path, *args: str, user: str = "dev") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RUNNER_USER": user, "RUNNER_DATABASE_URL": f"sqlite:///{tmp}/runner.db"}
    env["RUNNER_DATA_DIR"] = str(tmp / "data")
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_scan_gate_refusal_approval_patch_and_notification(tmp_path: Path) -> None:
    sample = tmp_path / "sample-app"
    subprocess.run([str(ROOT / "examples" / "make-sample-repo.sh"), str(sample)], check=True)
    repo = str(ROOT / "workflows-repo-example")
    started = runner(
        tmp_path, "run", "pr-security-review", "--repo", repo, "--workspace", str(sample)
    )
    assert started.returncode == 3, started.stdout + started.stderr
    assert "run 1: waiting_approval" in started.stdout
    assert "RUNNER_USER=alice runner approve 1 --step patch" in started.stdout

    shown = json.loads(runner(tmp_path, "show", "1", "--output", "json").stdout)
    steps = {s["id"]: s for s in shown["steps"]}
    scan = steps["scan"]["outputs"]
    rules = {f["rule"] for f in scan["findings"]}
    assert {"secret/aws-access-key", "bandit/B602"} <= rules
    assert scan["summary"]["critical"] >= 1
    assert steps["compliance"]["outputs"]["passed"] is False
    assert any("SECURITY.md" in v["message"] for v in steps["compliance"]["outputs"]["violations"])
    assert {c["rule"] for c in steps["review"]["outputs"]["comments"]} >= {"F401", "E711"}
    assert steps["patch"]["status"] == "waiting_approval"

    logs = runner(tmp_path, "logs", "1").stdout
    assert "AKIAIOSFODNN7EXAMPLE" not in logs + json.dumps(shown)
    assert "correct-horse-battery-staple-42" not in logs + json.dumps(shown)

    refused = runner(tmp_path, "approve", "1", user="dev")
    assert refused.returncode == 1
    assert "dev is an author of this change" in refused.stderr
    not_listed = runner(tmp_path, "approve", "1", user="mallory")
    assert "mallory is not among the approvers" in not_listed.stderr

    approved = runner(tmp_path, "approve", "1", "--comment", "looks right", user="alice")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "run 1: succeeded" in approved.stdout

    shown = json.loads(runner(tmp_path, "show", "1", "--output", "json").stdout)
    steps = {s["id"]: s for s in shown["steps"]}
    patch = steps["patch"]["outputs"]
    assert patch["branch"] == "runner/patch-1"
    assert "src/shop/settings.py" in patch["files"]
    assert "-import os" in patch["patch"]
    assert patch["pushed"] is False  # no credentials given
    assert steps["notify"]["outputs"]["deliveries"] == [
        {"sink": "file:notifications.jsonl", "ok": True, "status": "written"}
    ]
    (gate,) = shown["approvals"]
    assert [(d["actor"], d["decision"], d["comment"]) for d in gate["decisions"]] == [
        ("alice", "approve", "looks right")
    ]
    assert "runner/patch-1" not in list(pygit2.Repository(str(sample)).branches.local)
    listing = json.loads(runner(tmp_path, "runs", "--output", "json").stdout)
    assert [(r["id"], r["status"]) for r in listing] == [(1, "succeeded")]
