"""Secrets are granted, never taken (issue 15, item 1). An agent committed to the workflows repo
asks for the runner's own credentials and network access: the revision is refused at the lines
of those requests, saying which configuration entry would grant them, and the agent never runs.
A configuration that tries to grant the runner's own credentials does not load. The legitimate
paths hold: a granted secret reaches the agent it is granted to, in the workflows it is granted
in, and nothing else does."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.source.test_reconciler import git

THIEF = """\
apiVersion: runner/v1
kind: Agent
metadata: {name: thief}
spec:
  command: [python, main.py]
  network: true
  secrets: [GH_TOKEN, GH_SECRET, OPS_TOKEN]
"""
REPORTER = """\
apiVersion: runner/v1
kind: Agent
metadata: {name: reporter}
spec:
  command: [python, main.py]
  secrets: [DEPLOY_TOKEN]
"""
# What an agent can see of its environment: every variable name, and a digest of the one it
# was granted (never the value itself).
REPORT = """\
import hashlib, json, os
token = os.environ.get("DEPLOY_TOKEN", "")
json.dump(
    {"names": sorted(os.environ), "digest": hashlib.sha256(token.encode()).hexdigest()},
    open(os.environ["RUNNER_OUTPUT"], "w"),
)
"""
WORKFLOW = """\
apiVersion: runner/v1
kind: Workflow
metadata: {{name: {name}}}
spec:
  triggers: [{{manual: {{}}}}]
  steps: [{{id: go, agent: {agent}}}]
"""
FORGES = """\
forges:
  - {name: github, kind: github, token_env: GH_TOKEN, webhook_secret_env: GH_SECRET}
api: {tokens: [{name: ops, role: admin, token_env: OPS_TOKEN}]}
"""
OWN = {"GH_TOKEN": "ghp-runner-own-token", "GH_SECRET": "hook-secret-own", "OPS_TOKEN": "ops-t0ken"}
DEPLOY = "deploy-token-for-the-reporter"


def workflows_repo(
    root: Path, agents: dict[str, tuple[str, str]], workflows: dict[str, str]
) -> Path:
    repo = root / "workflows"
    for name, (manifest, program) in agents.items():
        (repo / "agents" / name).mkdir(parents=True)
        (repo / "agents" / name / "agent.yaml").write_text(manifest)
        (repo / "agents" / name / "main.py").write_text(program)
    (repo / "workflows").mkdir(parents=True, exist_ok=True)
    for name, agent in workflows.items():
        (repo / "workflows" / f"{name}.yaml").write_text(WORKFLOW.format(name=name, agent=agent))
    return repo


def runner(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=home,
        env={**clean, **OWN, "RUNNER_USER": "dev", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def test_an_agent_asking_for_the_runners_credentials_is_refused_at_its_lines(
    tmp_path: Path, home: Path
) -> None:
    repo = workflows_repo(tmp_path, {"thief": (THIEF, "")}, {"steal": "thief"})
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a helpful agent")
    (home / "runner.yaml").write_text(
        f"sources: [{{name: main, url: '{repo}', branch: main}}]\n" + FORGES
    )
    reconciled = runner(home, "reconcile", "--once")
    assert reconciled.returncode == 1, reconciled.stdout + reconciled.stderr
    (source,) = json.loads(runner(home, "sources", "--output", "json").stdout)
    assert source["applied_revision"] is None  # never applied: the agent can never run
    errors = {(e["line"], e["pointer"]): e["message"] for e in source["errors"]}
    assert errors[(6, "/spec/network")].startswith("agent 'thief' asks for network access")
    assert "add 'thief' to executor.allow_network in runner.yaml" in errors[(6, "/spec/network")]
    for i, name in enumerate(("GH_TOKEN", "GH_SECRET", "OPS_TOKEN")):
        message = errors[(7, f"/spec/secrets/{i}")]
        assert f"asks for secret {name!r}, which the runner's configuration does not grant" in (
            message
        )
        assert f"add {{name: {name}, env: {name}, agents: [thief]}} under secrets:" in message

    # `runner validate` says the same before anything is pushed (with --config, or the
    # ./runner.yaml it finds); without a configuration, the repository is checked on its own
    # and the summary says what was not checked.
    checked = runner(home, "validate", str(repo), "--config", "runner.yaml")
    assert checked.returncode == 1
    assert "agents/thief/agent.yaml:7:" in checked.stdout
    assert "asks for secret 'OPS_TOKEN'" in checked.stdout
    assert runner(home, "validate", str(repo)).stdout == checked.stdout
    alone = runner(tmp_path, "validate", str(repo))
    assert alone.returncode == 0
    assert "secrets, network and limits not checked: no configuration" in alone.stderr


@pytest.mark.parametrize(
    ("entry", "pointer", "says"),
    [
        ("{name: STOLEN, env: GH_TOKEN}", "secrets/0/env", "forges[0].token_env"),
        ("{name: STOLEN, env: OPS_TOKEN}", "secrets/0/env", "api.tokens[0].token_env"),
        ("{name: STOLEN, env: RUNNER_DATABASE_URL}", "secrets/0/env", "the runner itself"),
        ("{name: STOLEN, env: PGPASSWORD}", "secrets/0/env", "a PostgreSQL credential"),
        ("{name: STOLEN, file: runner.yaml}", "secrets/0/file", "own credentials or state"),
        ("{name: STOLEN, file: runner.db}", "secrets/0/file", "own credentials or state"),
        ("{name: RUNNER_INPUT, env: X}", "secrets/0/name", "are the runner's own"),
        ("{name: PATH, env: X}", "secrets/0/name", "set by the runner for every agent"),
        ("{name: STOLEN, file: /proc/self/environ}", "secrets/0/file", "under /proc"),
        ("{name: STOLEN}", "secrets/0", "env: VARIABLE or file: PATH"),
    ],
)
def test_the_configuration_cannot_grant_the_runners_own_credentials(
    home: Path, entry: str, pointer: str, says: str
) -> None:
    (home / "runner.yaml").write_text(FORGES + f"secrets:\n  - {entry}\n")
    shown = runner(home, "runs")
    assert shown.returncode == 2
    assert "runner.yaml:5:" in shown.stderr
    assert f"[/{pointer}]" in shown.stderr
    assert says in shown.stderr


def test_a_granted_secret_reaches_its_agent_and_only_where_granted(
    tmp_path: Path, home: Path
) -> None:
    repo = workflows_repo(
        tmp_path,
        {"reporter": (REPORTER, REPORT)},
        {"deploy": "reporter", "elsewhere": "reporter"},
    )
    grant = (
        "secrets: [{name: DEPLOY_TOKEN, env: DEPLOY, agents: [reporter], workflows: [deploy]}]\n"
    )
    (home / "runner.yaml").write_text(FORGES + grant)
    env = {"DEPLOY": DEPLOY}

    # `elsewhere` runs the same agent in a workflow the grant does not name: refused at its step
    refused = runner(home, "run", "deploy", "--repo", str(repo), env=env)
    assert refused.returncode == 1
    assert "workflows/elsewhere.yaml:6:27:" in refused.stdout
    assert "granted runner.yaml:4 (secrets[0]) only in workflows [deploy]" in refused.stdout
    (repo / "workflows" / "elsewhere.yaml").unlink()

    ran = runner(home, "run", "deploy", "--repo", str(repo), env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    shown = json.loads(runner(home, "show", "1", "--output", "json", env=env).stdout)
    outputs = shown["steps"][0]["outputs"]
    assert outputs["digest"] == hashlib.sha256(DEPLOY.encode()).hexdigest()
    assert "DEPLOY_TOKEN" in outputs["names"]
    assert not {"GH_TOKEN", "GH_SECRET", "OPS_TOKEN", "DEPLOY"} & set(outputs["names"])


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("abc", "shorter than 4 characters"),
        (OWN["GH_TOKEN"], "holds one of the runner's own credentials"),
        (
            f"https://x-access-token:{OWN['GH_TOKEN']}@github.example/acme/app.git",
            "own credentials",
        ),
    ],
    ids=["short", "the forge token", "the forge token inside"],
)
def test_a_granted_value_too_short_or_the_runners_own_is_refused_when_the_step_starts(
    tmp_path: Path, home: Path, value: str, says: str
) -> None:
    repo = workflows_repo(tmp_path, {"reporter": (REPORTER, REPORT)}, {"deploy": "reporter"})
    grant = "secrets: [{name: DEPLOY_TOKEN, env: DEPLOY, agents: [reporter]}]\n"
    (home / "runner.yaml").write_text(FORGES + grant)
    ran = runner(home, "run", "deploy", "--repo", str(repo), env={"DEPLOY": value})
    assert ran.returncode == 1
    shown = json.loads(runner(home, "show", "1", "--output", "json").stdout)
    (step,) = shown["steps"]
    assert step["status"] == "failed"
    assert says in step["error"]
    assert step["outputs"] is None  # the agent never started
    log = runner(home, "logs", "1", "go").stdout
    assert "not started" in log
    assert value not in log or len(value) < 4


CEILING = """\
apiVersion: runner/v1
kind: Agent
metadata: {name: greedy}
spec:
  command: [python, main.py]
  timeout: 48h
  resources: {pids: 100000, memory: 1000Ti}
"""


def test_an_agent_cannot_raise_its_own_limits_past_the_operators_ceilings(
    tmp_path: Path, home: Path
) -> None:
    repo = workflows_repo(tmp_path, {"greedy": (CEILING, REPORT)}, {"hog": "greedy"})
    (home / "runner.yaml").write_text("executor: {max_pids: 512, max_memory: 2Gi}\n")
    checked = runner(home, "validate", str(repo), "--config", "runner.yaml")
    assert checked.returncode == 1
    errors = checked.stdout
    assert "agents/greedy/agent.yaml:6:" in errors  # timeout, over the 6h default
    assert "100000 processes is over executor.max_pids (512)" in errors
    assert "over executor.max_memory" in errors
    assert "172800s is over executor.max_timeout (21600s)" in errors


TWO = """\
apiVersion: runner/v1
kind: Agent
metadata: {name: deployer}
spec:
  command: [python, main.py]
  secrets: [DEPLOY_TOKEN]
"""


def test_a_grant_for_one_sources_agent_is_not_another_sources(tmp_path: Path, home: Path) -> None:
    """Two workflows repos each hold an agent named `deployer`; the grant names the first
    source. The second repository's agent of the same name gets nothing."""
    repos = {}
    for name in ("ours", "theirs"):
        repo = workflows_repo(tmp_path / name, {"deployer": (TWO, REPORT)}, {"deploy": "deployer"})
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", name)
        repos[name] = repo
    (home / "runner.yaml").write_text(
        "sources:\n"
        + "".join(f"  - {{name: {n}, url: '{r}', branch: main}}\n" for n, r in repos.items())
        + "secrets: [{name: DEPLOY_TOKEN, env: DEPLOY, agents: [deployer], sources: [ours]}]\n"
    )
    runner(home, "reconcile", "--once", env={"DEPLOY": DEPLOY})
    statuses = {s["name"]: s for s in json.loads(runner(home, "sources", "-o", "json").stdout)}
    assert statuses["ours"]["applied_revision"] is not None
    assert statuses["theirs"]["applied_revision"] is None
    (error,) = statuses["theirs"]["errors"]
    assert "asks for secret 'DEPLOY_TOKEN'" in error["message"]
