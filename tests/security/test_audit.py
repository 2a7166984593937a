"""The audit trail is append-only in the database itself (issue 15, item 5), on SQLite and on
PostgreSQL: gates are decided with the CLI as a user would, then someone with a connection to
the database tries to rewrite history. Only `runner db prune` removes anything, and only whole
finished runs."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.test_serve import AGENT, ECHO

GATED = """\
apiVersion: runner/v1
kind: Workflow
metadata: {name: gated}
spec:
  triggers: [{manual: {}}]
  steps:
    - {id: check, agent: hello}
    - {id: ship, agent: hello, needs: [check], approval: {approvers: [alice]}}
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/runner.db"
    return str(request.getfixturevalue("postgres_url"))


def cli(home: Path, database: str, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RUNNER_DATABASE_URL": database, "RUNNER_USER": user}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def tamper(database: str) -> Callable[[str], str]:
    """A function running one statement as someone with a connection to the database; the
    error it got (empty when the statement went through)."""

    def run(statement: str) -> str:
        try:
            if database.startswith("sqlite"):
                with sqlite3.connect(database.removeprefix("sqlite:///")) as conn:
                    conn.execute(statement)
            else:
                with psycopg.connect(database, autocommit=True) as conn:
                    conn.execute(statement.encode())
        except (sqlite3.DatabaseError, psycopg.Error) as exc:
            return str(exc)
        return ""

    return run


def test_decisions_cannot_be_rewritten_and_only_retention_removes_finished_runs(
    tmp_path: Path, database: str
) -> None:
    repo = tmp_path / "workflows"
    (repo / "workflows").mkdir(parents=True)
    (repo / "agents" / "hello").mkdir(parents=True)
    (repo / "workflows" / "gated.yaml").write_text(GATED)
    (repo / "agents" / "hello" / "agent.yaml").write_text(AGENT)
    (repo / "agents" / "hello" / "main.py").write_text(ECHO)
    home = tmp_path / "home"
    home.mkdir()

    started = cli(home, database, "dev", "run", "gated", "--repo", str(repo))
    assert started.returncode == 3, started.stderr
    approved = cli(home, database, "alice", "approve", "1", "--comment", "ship it")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    waiting = cli(home, database, "dev", "run", "gated", "--repo", str(repo))
    assert waiting.returncode == 3, waiting.stderr  # run 2 stays at its gate

    shown = cli(home, database, "dev", "show", "1", "--output", "json")
    (gate,) = json.loads(shown.stdout)["approvals"]
    (decision,) = gate["decisions"]
    assert decision["actor"] == "alice"
    assert decision["via"] == "cli"
    assert decision["comment"] == "ship it"
    assert decision["revision"] == gate["revision"]
    assert decision["revision"]
    assert decision["inputs_digest"].startswith("sha256:")
    assert decision["at"] > 0

    attack = tamper(database)
    assert "append-only" in attack("UPDATE approval_decisions SET actor = 'mallory'")
    assert "append-only" in attack("DELETE FROM approval_decisions")
    assert "append-only" in attack("DELETE FROM approvals")
    assert "prune" in attack("DELETE FROM runs")
    assert "recorded decisions" in attack("UPDATE approvals SET status = 'approved'")
    assert "recorded decisions" in attack("UPDATE approvals SET status = 'pending'")
    assert "recorded decisions" in attack("UPDATE approvals SET sha = 'c0ffee'")
    assert "finished runs only" in attack("INSERT INTO retention_runs (run_id) VALUES (2)")
    assert "pending approval" in attack(
        "INSERT INTO approval_decisions (approval_id, actor, decision, via, revision,"
        " inputs_digest, created_at) VALUES (1, 'mallory', 'approve', 'cli', 'r', 'd', 0)"
    )
    after: dict[str, Any] = json.loads(cli(home, database, "dev", "show", "1", "-o", "json").stdout)
    assert [d["actor"] for d in after["approvals"][0]["decisions"]] == ["alice"]
    assert after["approvals"][0]["status"] == "approved"

    pruned = cli(home, database, "dev", "db", "prune", "--older-than", "0s", "--keep-last", "0")
    assert pruned.returncode == 0, pruned.stderr
    assert "removed 1 finished run(s)" in pruned.stderr
    assert cli(home, database, "dev", "show", "1").returncode == 1  # gone, whole
    left = json.loads(cli(home, database, "dev", "show", "2", "-o", "json").stdout)
    assert left["status"] == "waiting_approval"
    assert left["approvals"][0]["status"] == "pending"
