"""Cancelled means finished everywhere, through `runner serve` over real HTTP: a signed GitHub
pull_request delivery starts a run that waits at an approval gate; cancelling it (through the
API, through `runner cancel`, or by a new push to the pull request) closes the gate, so that a
later `/approve` comment and an API decision are refused, reports a final commit status and an
edited PR comment to the (fake) GitHub, and counts in `runner_runs_total`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import test_e2e_forge as forge
from tests.fake_github import FakeGitHub
from tests.source.test_reconciler import git
from tests.test_e2e_forge import GATED, REPO, SECRET, comment, deliver
from tests.test_serve import AGENT, ECHO, free_port, wait_for

# the fixtures of the approval end-to-end test: the app's repository and the fake GitHub
app_repo, github = forge.app_repo, forge.github

TOKENS = {"T_OPS": "cancel-operator-t0ken-1", "T_CAROL": "cancel-approver-t0ken-2"}
OPS = {"Authorization": f"Bearer {TOKENS['T_OPS']}"}
CAROL = {"Authorization": f"Bearer {TOKENS['T_CAROL']}"}
CONTEXT = "runner/pr-gate"


class Service:
    def __init__(self, base: str, home: Path, env: dict[str, str]) -> None:
        self.base, self.home, self.env = base, home, env

    def runs(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = httpx.get(f"{self.base}/api/runs", headers=OPS).json()[
            "items"
        ]
        return items

    def run(self, run_id: int) -> dict[str, Any]:
        found: dict[str, Any] = httpx.get(f"{self.base}/api/runs/{run_id}", headers=OPS).json()
        return found

    def cancelled(self) -> float:
        found = re.search(
            r'^runner_runs_total\{outcome="cancelled",workflow="pr-gate"\} ([0-9.e+]+)$',
            httpx.get(f"{self.base}/metrics").text,
            re.MULTILINE,
        )
        return float(found.group(1)) if found else 0.0


@pytest.fixture
def serve(tmp_path: Path, github: FakeGitHub) -> Iterator[Callable[[], Service]]:
    """Start `runner serve` (role all) on the gated workflow, with API tokens, and metrics
    files shared with the CLI (`PROMETHEUS_MULTIPROC_DIR`, as in one container)."""
    started: list[subprocess.Popen[str]] = []

    def start() -> Service:
        workflows = tmp_path / "workflows-repo"
        (workflows / "workflows").mkdir(parents=True)
        (workflows / "agents" / "hello").mkdir(parents=True)
        (workflows / "workflows" / "gate.yaml").write_text(GATED)
        (workflows / "agents" / "hello" / "agent.yaml").write_text(AGENT)
        (workflows / "agents" / "hello" / "main.py").write_text(ECHO)
        port = free_port()
        home = tmp_path / "svc"
        home.mkdir()
        (home / "prometheus").mkdir()
        (home / "runner.yaml").write_text(
            f"listen: {{port: {port}}}\n"
            f"sources: [{{name: main, url: '{workflows}', interval: 1s}}]\n"
            "executor: {sandbox: false}\n"
            "api:\n"
            "  tokens:\n"
            "    - {name: ops, role: operator, token_env: T_OPS}\n"
            "    - {name: carol, role: approver, token_env: T_CAROL}\n"
            "forges:\n"
            f"  - {{name: github, kind: github, api_url: '{github.url}', token_env: GH_TOKEN,"
            " webhook_secret_env: GH_SECRET}\n"
        )
        env = {
            **os.environ,
            **TOKENS,
            "GH_SECRET": SECRET,
            "GH_TOKEN": "gh-t0ken",
            "PROMETHEUS_MULTIPROC_DIR": str(home / "prometheus"),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "runner", "serve"],
            cwd=home,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready)
        return Service(base, home, env)

    yield start
    for process in started:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
        assert "gh-t0ken" not in errors
        for token in TOKENS.values():
            assert token not in errors


def opened(work: Path, sha: str, action: str = "opened") -> dict[str, object]:
    return {
        "action": action,
        "number": 9,
        "pull_request": {
            "number": 9,
            "head": {"sha": sha, "ref": "feature"},
            "base": {"ref": "main"},
            "user": {"login": "dev"},
        },
        "repository": {"full_name": REPO, "clone_url": str(work)},
        "sender": {"login": "dev"},
    }


def waiting_run(service: Service, github: FakeGitHub, sha: str) -> dict[str, Any]:
    """The run of `sha` once it waits at its gate and the PR comment asks for `/approve`."""
    wait_for(
        lambda: any(
            r["status"] == "waiting_approval" and r["trigger"].get("sha") == sha
            for r in service.runs()
        )
    )
    (run,) = [r for r in service.runs() if r["trigger"].get("sha") == sha]
    body = f"<!-- runner:run:{run['id']} -->"
    wait_for(lambda: any(body in c[2] and "comment `/approve" in c[2] for c in github.comments))
    (gate,) = service.run(run["id"])["approvals"]
    assert gate["status"] == "pending"
    return run


def assert_finished_everywhere(
    service: Service,
    github: FakeGitHub,
    run: dict[str, Any],
    sha: str,
    reason: str,
    *,
    waiting: int = 0,
) -> None:
    """The run is cancelled for `reason` and finished everywhere; `waiting` gates of other
    runs wait."""
    shown = service.run(run["id"])
    assert shown["status"] == "cancelled"
    assert reason in shown["error"]
    # the gate is closed, and says why
    (gate,) = shown["approvals"]
    assert gate["status"] == "rejected"
    pending = httpx.get(f"{service.base}/api/approvals?status=pending", headers=OPS).json()
    assert [a for a in pending["items"] if a["run_id"] == run["id"]] == []
    # an API decision on it is refused
    late = httpx.post(
        f"{service.base}/api/approvals/{gate['id']}/decision",
        json={"decision": "approve"},
        headers=CAROL,
    )
    assert late.status_code == 409, late.text
    assert late.json()["error"]["code"] == "conflict"
    assert "cancelled" in late.json()["error"]["message"]

    # GitHub got a final status for the commit, and the run's comment was edited
    def final() -> dict[str, Any]:
        return [s[2] for s in github.statuses if s[1] == sha and s[2]["context"] == CONTEXT][-1]

    wait_for(lambda: final()["state"] == "error")
    assert final()["description"].startswith("cancelled: ")
    assert reason in final()["description"]
    body = next(c[2] for c in github.comments if f"<!-- runner:run:{run['id']} -->" in c[2])
    assert "**cancelled**" in body
    assert "Cancelled:" in body
    assert reason in body
    assert "/approve" not in body
    assert any(f"<!-- runner:run:{run['id']} -->" in text for _, text in github.edits)
    # a later /approve comment is refused, with a reply saying why
    before = len(github.comments)
    text = f"/approve {run['id']}"
    late_comment = comment(text, "carol")
    delivered = deliver(service.base, "issue_comment", f"late-{run['id']}", late_comment)
    assert delivered.status_code == 202
    wait_for(lambda: any("was cancelled" in c[2] for c in github.comments[before:]))
    assert service.run(run["id"])["approvals"][0]["status"] == "rejected"
    # metrics: counted once, and its gate no longer waits
    wait_for(lambda: service.cancelled() == 1.0)
    scraped = httpx.get(f"{service.base}/metrics").text
    assert re.search(rf"^runner_approvals_waiting {waiting}\.0$", scraped, re.MULTILINE)


def test_cancel_through_the_api_finishes_the_run_everywhere(
    serve: Callable[[], Service],
    github: FakeGitHub,
    app_repo: tuple[Path, str],
) -> None:
    service = serve()
    work, sha = app_repo
    assert deliver(service.base, "pull_request", "open-1", opened(work, sha)).status_code == 202
    run = waiting_run(service, github, sha)
    answer = httpx.post(f"{service.base}/api/runs/{run['id']}/cancel", headers=OPS)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
    assert_finished_everywhere(service, github, run, sha, "cancelled by ops (API)")
    # cancelling again is a conflict, not a second count
    again = httpx.post(f"{service.base}/api/runs/{run['id']}/cancel", headers=OPS)
    assert again.status_code == 409
    assert service.cancelled() == 1.0


def test_cancel_through_the_cli_finishes_the_run_everywhere(
    serve: Callable[[], Service],
    github: FakeGitHub,
    app_repo: tuple[Path, str],
) -> None:
    service = serve()
    work, sha = app_repo
    assert deliver(service.base, "pull_request", "open-2", opened(work, sha)).status_code == 202
    run = waiting_run(service, github, sha)
    done = subprocess.run(
        [sys.executable, "-m", "runner", "cancel", str(run["id"]), "--reason", "wrong branch"],
        cwd=service.home,
        env={**service.env, "RUNNER_USER": "alice"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "cancelled" in done.stdout
    assert_finished_everywhere(service, github, run, sha, "cancelled by alice (CLI): wrong branch")
    # the CLI, like the API, refuses to cancel what is finished
    again = subprocess.run(
        [sys.executable, "-m", "runner", "cancel", str(run["id"])],
        cwd=service.home,
        env=service.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1
    assert "only an unfinished run can be cancelled" in again.stderr
    assert "Traceback" not in again.stderr
    # and `runner approve` says why nothing waits
    late = subprocess.run(
        [sys.executable, "-m", "runner", "approve", str(run["id"])],
        cwd=service.home,
        env={**service.env, "RUNNER_USER": "carol"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert late.returncode == 1
    assert f"run {run['id']} was cancelled (cancelled by alice (CLI): wrong branch)" in late.stderr


def test_a_new_push_supersedes_the_waiting_run_everywhere(
    serve: Callable[[], Service],
    github: FakeGitHub,
    app_repo: tuple[Path, str],
) -> None:
    service = serve()
    work, sha = app_repo
    assert deliver(service.base, "pull_request", "open-3", opened(work, sha)).status_code == 202
    run = waiting_run(service, github, sha)
    (work / "main.py").write_text("print('hi again')\n")
    git(work, "commit", "-q", "-am", "second")
    new = git(work, "rev-parse", "HEAD")
    github.pulls[(REPO, 9)] = {"head": {"sha": new}, "user": {"login": "dev"}}
    pushed = opened(work, new, action="synchronize")
    assert deliver(service.base, "pull_request", "sync-3", pushed).status_code == 202
    # the new head has its own run, waiting at its own gate
    fresh = waiting_run(service, github, new)
    assert fresh["id"] != run["id"]
    why = f"superseded by a push of {new[:12]}"
    assert_finished_everywhere(service, github, run, sha, why, waiting=1)
    assert [s[2]["state"] for s in github.statuses if s[1] == new][-1] == "pending"
    assert "comment `/approve" in next(
        c[2] for c in github.comments if f"<!-- runner:run:{fresh['id']} -->" in c[2]
    )
