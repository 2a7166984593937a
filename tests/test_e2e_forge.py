"""End to end through `runner serve` over real HTTP: a signed GitHub pull_request delivery starts
a gated run, the PR author's `/approve` is refused with a reply, a security-team member's
`/approve` resumes it, and the run's commit status and its one PR comment end as success. A
forged signature, a replayed delivery and an oversized body change nothing. GitHub itself is
the fake of `tests/fake_github.py`."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.fake_github import FakeGitHub, fake_github
from tests.source.test_reconciler import git
from tests.test_serve import AGENT, ECHO, free_port, wait_for

SECRET = "e2e-webhook-secret"
COMMENT_IDS = itertools.count(1)
REPO = "acme/app"
GATED = """\
apiVersion: runner/v1
kind: Workflow
metadata: {name: pr-gate}
spec:
  triggers: [{pull_request: {types: [opened, synchronize]}}]
  steps:
    - {id: check, agent: hello}
    - {id: ship, agent: hello, needs: [check], approval: {approvers: ["@acme/security"]}}
"""


@pytest.fixture
def app_repo(tmp_path: Path) -> tuple[Path, str]:
    work = tmp_path / "app"
    git(tmp_path, "init", "-q", "-b", "main", str(work))
    (work / "main.py").write_text("print('hi')\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "app")
    return work, git(work, "rev-parse", "HEAD")


@pytest.fixture
def github(app_repo: tuple[Path, str]) -> Iterator[FakeGitHub]:
    with fake_github() as fake:
        fake.writers = {"dev", "carol"}
        fake.teams = {"acme/security": {"carol"}}
        fake.pulls[(REPO, 9)] = {"head": {"sha": app_repo[1]}, "user": {"login": "dev"}}
        yield fake


@pytest.fixture
def service(tmp_path: Path, github: FakeGitHub) -> Iterator[str]:
    workflows = tmp_path / "workflows-repo"
    (workflows / "workflows").mkdir(parents=True)
    (workflows / "agents" / "hello").mkdir(parents=True)
    (workflows / "workflows" / "gate.yaml").write_text(GATED)
    (workflows / "agents" / "hello" / "agent.yaml").write_text(AGENT)
    (workflows / "agents" / "hello" / "main.py").write_text(ECHO)
    port = free_port()
    home = tmp_path / "svc"
    home.mkdir()
    (home / "runner.yaml").write_text(
        f"listen: {{port: {port}, max_body_bytes: 65536}}\n"
        f"sources: [{{name: main, url: '{workflows}', interval: 1s}}]\n"
        "executor: {sandbox: false}\n"
        "forges:\n"
        f"  - {{name: github, kind: github, api_url: '{github.url}', token_env: GH_TOKEN,"
        " webhook_secret_env: GH_SECRET}\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve"],
        cwd=home,
        env={**os.environ, "GH_SECRET": SECRET, "GH_TOKEN": "gh-t0ken"},
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
        assert "gh-t0ken" not in errors
        assert SECRET not in errors


def deliver(
    base: str, event: str, delivery: str, payload: object, *, secret: str = SECRET
) -> httpx.Response:
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(
        f"{base}/hooks/github",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature,
        },
    )


def comment(text: str, user: str, number: int = 9) -> dict[str, object]:
    return {
        "action": "created",
        "issue": {"number": number, "pull_request": {"url": "u"}, "user": {"login": "dev"}},
        "comment": {
            "id": next(COMMENT_IDS),
            "created_at": datetime.now(UTC).isoformat(),
            "body": text,
            "user": {"login": user, "type": "User"},
            "html_url": f"https://github.example/{REPO}/pull/{number}#c-{user}",
        },
        "repository": {"full_name": REPO, "clone_url": f"https://github.example/{REPO}.git"},
        "sender": {"login": user, "type": "User"},
    }


def run_comment(fake: FakeGitHub) -> str:
    found = [body for repo, number, body in fake.comments if "<!-- runner:run:" in body]
    assert len(found) == 1, found  # one comment per run, edited in place
    return found[0]


def statuses(fake: FakeGitHub, context: str) -> list[str]:
    return [s[2]["state"] for s in fake.statuses if s[2]["context"] == context]


def test_signed_pr_comment_approval_resumes_the_run_and_reports_success(
    service: str, github: FakeGitHub, app_repo: tuple[Path, str]
) -> None:
    work, sha = app_repo
    opened = {
        "action": "opened",
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
    assert deliver(service, "pull_request", "pr-open-1", opened).status_code == 202
    wait_for(lambda: "comment `/approve" in (run_comment(github) if github.comments else ""))
    assert "| check | succeeded |" in run_comment(github)
    assert statuses(github, "runner/pr-gate")[-1] == "pending"

    # The author may not approve their own change: refused, with a reply, nothing moves.
    assert deliver(service, "issue_comment", "c-dev", comment("/approve", "dev")).status_code == 202
    wait_for(lambda: any("@dev: not counted" in c[2] for c in github.comments))
    assert "waiting_approval" in run_comment(github)

    # What changes nothing: a forged signature, a replay, an oversized body.
    before = (list(github.comments), list(github.statuses))
    forged = deliver(
        service, "issue_comment", "c-forged", comment("/approve", "carol"), secret="guess"
    )
    assert forged.status_code == 401
    replay = deliver(service, "issue_comment", "c-dev", comment("/approve", "carol"))
    assert (replay.status_code, replay.json()["status"]) == (200, "duplicate")
    huge = comment("/approve " + "x" * 70_000, "carol")
    assert deliver(service, "issue_comment", "c-huge", huge).status_code == 413
    time.sleep(1.5)  # a dispatcher poll or more: still nothing new
    assert (github.comments, github.statuses) == before

    # A security-team member approves: the run finishes, and the PR shows it.
    assert (
        deliver(service, "issue_comment", "c-carol", comment("/approve", "carol")).status_code
        == 202
    )
    wait_for(lambda: statuses(github, "runner/pr-gate")[-1] == "success")
    # the reporter sets the status first, then edits the comment
    wait_for(lambda: "**succeeded**" in run_comment(github))
    final = run_comment(github)
    assert "**succeeded**" in final
    assert "| ship | succeeded |" in final
    assert any("step `ship`" in c[2] and "(@carol)" in c[2] for c in github.comments)
