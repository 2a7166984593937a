"""`runner validate` and `runner plan` as a user runs them: real processes, real git."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.store.sql import migrations

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "workflows-repo-example"


def runner(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


BROKEN = """\
apiVersion: runner/v1
kind: Workflow
metadata: {name: broken}
spec:
  triggers: [{manual: {}}]
  steps:
    - id: scan
      agent: security-scaner
    - id: review
      agent: code-reviewer
      needs: [scna]
      when: "steps.patch.outputs.ok"
"""


def test_validate_example_repo_succeeds() -> None:
    done = runner("validate", str(EXAMPLE))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""
    assert "valid: 3 workflow(s), 1 repo agent(s)" in done.stderr


def test_validate_prints_every_error_with_position(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN)
    done = runner("validate", "broken.yaml", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "broken.yaml:8:14: unknown agent 'security-scaner'; did you mean 'security-scanner'? "
        "[/spec/steps/0/agent]",
        "broken.yaml:11:15: step 'review' needs 'scna', which is not a step of this workflow; "
        "did you mean 'scan'? [/spec/steps/1/needs/0]",
        "broken.yaml:12:13: 'steps.patch.outputs.ok' reads steps.patch, which is not a step "
        "of this workflow [/spec/steps/1/when]",
    ]
    assert "3 error(s) in 1 file(s)" in done.stderr


def test_validate_json_output(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN)
    done = runner("validate", "--output", "json", "broken.yaml", cwd=tmp_path)
    assert done.returncode == 1
    errors = json.loads(done.stdout)
    assert errors[0] == {
        "path": "broken.yaml",
        "line": 8,
        "column": 14,
        "pointer": "/spec/steps/0/agent",
        "document": 0,
        "message": "unknown agent 'security-scaner'; did you mean 'security-scanner'?",
    }
    assert [e["line"] for e in errors] == [8, 11, 12]


def test_validate_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    done = runner("validate", "nope.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert "nope.yaml: no such file or directory" in done.stderr


def test_validate_single_file_in_a_repo_sees_the_repo_agents() -> None:
    done = runner("validate", str(EXAMPLE / "workflows" / "nightly-compliance.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_plan_first_apply_lists_everything_with_schedules_and_gates() -> None:
    done = runner("plan", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "  + workflow pr-security-review (added)" in lines
    assert "  + agent spdx-headers (added)" in lines
    schedule = next(line for line in lines if "nightly-compliance: 0 3 * * *" in line)
    assert schedule.count("03:00 CET") + schedule.count("03:00 CEST") == 3
    assert (
        "  pr-security-review/patch: 1 approval(s) from @acme/security, alice; "
        "after 24h: reject" in lines
    )
    assert lines[-1] == "4 to add, 0 to change, 0 to remove."


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repo whose first commit holds a copy of the example workflows repo under ops/."""
    root = tmp_path / "repo"
    shutil.copytree(EXAMPLE, root / "ops")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    return root


def test_plan_against_a_git_revision(repo: Path) -> None:
    ops = repo / "ops"
    (ops / "workflows" / "deploy-check.yaml").unlink()
    nightly = ops / "workflows" / "nightly-compliance.yaml"
    nightly.write_text(nightly.read_text().replace('"0 3 * * *"', '"30 4 * * 1-5"'))
    pr = ops / "workflows" / "pr-security-review.yaml"
    pr.write_text("# only a comment changes the text, not the document\n" + pr.read_text())
    done = runner("plan", "ops", "--against", "HEAD", "--output", "json", cwd=repo)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    actions = {(c["kind"], c["name"]): c["action"] for c in plan["changes"]}
    assert actions == {
        ("workflow", "deploy-check"): "removed",
        ("workflow", "nightly-compliance"): "changed",
        ("workflow", "pr-security-review"): "unchanged",
        ("agent", "spdx-headers"): "unchanged",
    }
    schedules = {(s["cron"], s["action"]) for s in plan["schedules"]}
    assert schedules == {("30 4 * * 1-5", "added"), ("0 3 * * *", "removed")}
    added = next(s for s in plan["schedules"] if s["action"] == "added")
    assert len(added["next_fires"]) == 3
    assert plan["agents_changed"] == plan["grants"] == plan["narrowings"] == []


DEPLOYER = """\
apiVersion: runner/v1
kind: Agent
metadata: {name: deployer}
spec:
  command: [python, main.py]
  network: true
  secrets: [DEPLOY_TOKEN]
"""


def test_plan_shows_agent_files_and_what_the_change_grants(repo: Path) -> None:
    unchanged = runner("plan", "ops", "--against", "HEAD", cwd=repo)
    assert unchanged.returncode == 0, unchanged.stderr
    assert (
        "What this merge grants: nothing widens: no new secret, network access or step "
        "without approval" in unchanged.stdout.splitlines()
    )

    ops = repo / "ops"
    (ops / "agents" / "deployer").mkdir()
    (ops / "agents" / "deployer" / "agent.yaml").write_text(DEPLOYER)
    spdx = ops / "agents" / "spdx-headers" / "agent.yaml"
    gated = "  timeout: 2m\n  network: true\n  risk: approval_required"  # wider and narrower
    spdx.write_text(spdx.read_text().replace("  timeout: 2m", gated))
    deploy = ops / "workflows" / "deploy-check.yaml"
    deploy.write_text(
        deploy.read_text().replace(
            "    - id: notify",
            "    - id: ship\n      agent: deployer\n      needs: [gate]\n    - id: notify",
        )
    )
    text = runner("plan", "ops", "--against", "HEAD", cwd=repo)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    section = lines[lines.index("Agents changed:") : lines.index("Schedules:")]
    assert section == [
        "Agents changed:",
        "  + ops/agents/deployer/agent.yaml: agent deployer added",
        "  ~ ops/agents/spdx-headers/agent.yaml: agent spdx-headers changed",
        "What this merge grants:",
        "  ! agent deployer (ops/agents/deployer/agent.yaml): asks for secret DEPLOY_TOKEN (new)",
        "  ! agent deployer (ops/agents/deployer/agent.yaml): network access: on (new agent)",
        "  ! agent deployer (ops/agents/deployer/agent.yaml): risk: auto (new agent; its steps "
        "run without waiting for approval)",
        "  ! agent deployer (ops/agents/deployer/agent.yaml): new step deploy-check/ship runs "
        "it: secret DEPLOY_TOKEN, network access",
        "  ! agent spdx-headers (ops/agents/spdx-headers/agent.yaml): network access: off → on",
        "Reach reduced:",
        "    agent spdx-headers (ops/agents/spdx-headers/agent.yaml): risk: auto → "
        "approval_required (its steps now wait for approval)",
    ]

    done = runner("plan", "ops", "--against", "HEAD", "--output", "json", cwd=repo)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["agents_changed"] == [
        {
            "name": "deployer",
            "file": "ops/agents/deployer/agent.yaml",
            "action": "added",
            "program": False,
        },
        {
            "name": "spdx-headers",
            "file": "ops/agents/spdx-headers/agent.yaml",
            "action": "changed",
            "program": False,
        },
    ]
    grants = [
        (g["agent"], g["kind"], g["old"], g["new"]) for g in plan["grants"] if g["kind"] != "step"
    ]
    assert grants == [
        ("deployer", "secret", None, "DEPLOY_TOKEN"),
        ("deployer", "network", None, "on"),
        ("deployer", "risk", None, "auto"),
        ("spdx-headers", "network", "off", "on"),
    ]
    (step,) = [g for g in plan["grants"] if g["kind"] == "step"]
    assert (step["workflow"], step["step"], step["was"]) == ("deploy-check", "ship", None)
    assert (step["secrets"], step["network"], step["ungated"]) == (["DEPLOY_TOKEN"], True, False)
    (narrowing,) = plan["narrowings"]
    assert (narrowing["agent"], narrowing["kind"], narrowing["new"]) == (
        "spdx-headers",
        "risk",
        "approval_required",
    )


def test_plan_against_unknown_revision_is_a_usage_error(repo: Path) -> None:
    done = runner("plan", "ops", "--against", "no-such-branch", cwd=repo)
    assert done.returncode == 2
    assert "unknown git revision 'no-such-branch'" in done.stderr


def test_plan_of_an_invalid_tree_prints_errors_and_fails(tmp_path: Path) -> None:
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "broken.yaml").write_text(BROKEN)
    done = runner("plan", ".", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout.startswith("workflows/broken.yaml:8:14: unknown agent")
    assert "would not be applied" in done.stderr


def test_help_everywhere() -> None:
    for args in (["--help"], ["validate", "--help"], ["plan", "--help"]):
        done = runner(*args)
        assert done.returncode == 0
        assert "Usage: runner" in done.stdout


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_db_migrate_applies_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/state/runner.db"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    config = tmp_path / "runner.yaml"
    config.write_text(f"database: {{url: '{url}'}}\n")
    first = runner("db", "migrate", "--config", str(config))
    assert first.returncode == 0, first.stderr
    applied = [f"applied {name}" for _, name, _ in migrations("sqlite")]
    assert first.stdout.splitlines() == [*applied, "database schema is up to date"]
    again = runner("db", "migrate", "--config", str(config))
    assert again.stdout.strip() == "database schema is up to date (nothing to apply)"


def test_db_migrate_unreachable_database_says_so_without_the_password(tmp_path: Path) -> None:
    config = tmp_path / "runner.yaml"
    url = "postgresql://runner:s3cret@127.0.0.1:1/x"
    config.write_text(f"database: {{url: '{url}', connect_timeout: 1}}\n")
    done = runner("db", "migrate", "--config", str(config))
    assert done.returncode == 1
    assert "cannot reach the database" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout
    assert "error connecting" not in done.stderr  # one clear message, not the pool's retries
