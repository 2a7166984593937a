"""`runner serve` as the security tests attack it: a real service on 127.0.0.1 with a GitHub
and a Gitea forge (both answered by the fake GitHub API, whose Gitea paths it also serves), a
workflows repo folder, an application repository to run on, and helpers that sign deliveries
the way each forge does."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.fake_github import FakeGitHub
from tests.source.test_reconciler import git
from tests.test_serve import AGENT, ECHO, free_port, wait_for

REPO = "acme/app"
SECRETS = {"github": "gh-hook-secret-1", "gitea": "gt-hook-secret-2"}
ADMIN = "admin-token-for-tests"
_ids = itertools.count(100)


def now_iso(offset: float = 0.0) -> str:
    return datetime.fromtimestamp(datetime.now(UTC).timestamp() + offset, UTC).isoformat()


@dataclass
class Service:
    base: str
    github: FakeGitHub
    app: Path
    heads: list[str]

    # -- deliveries --------------------------------------------------------------------------------
    def deliver(
        self,
        forge: str,
        event: str,
        payload: Mapping[str, Any] | bytes,
        *,
        delivery: str | None = None,
        secret: str | None = None,
    ) -> httpx.Response:
        """POST a delivery to /hooks/<forge>, signed as that forge signs."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        key = (secret or SECRETS[forge]).encode()
        digest = hmac.new(key, body, hashlib.sha256).hexdigest()
        delivery = delivery or f"{forge}-{next(_ids)}"
        if forge == "gitea":
            headers = {
                "X-Gitea-Event": event,
                "X-Gitea-Delivery": delivery,
                "X-Gitea-Signature": digest,
            }
        else:
            headers = {
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": f"sha256={digest}",
            }
        return httpx.post(
            f"{self.base}/hooks/{forge}",
            content=body,
            headers={"Content-Type": "application/json", **headers},
        )

    def pull_request(
        self, number: int, action: str, *, head: str, author: str, sender: str
    ) -> dict[str, Any]:
        return {
            "action": action,
            "number": number,
            "pull_request": {
                "number": number,
                "head": {"sha": head, "ref": f"feature-{number}"},
                "base": {"ref": "main"},
                "user": {"login": author},
            },
            "repository": {"full_name": REPO, "clone_url": str(self.app)},
            "sender": {"login": sender, "type": "User"},
        }

    def comment(
        self,
        number: int,
        text: str,
        user: str,
        *,
        written: str | None = None,
        gitea: bool = False,
    ) -> dict[str, Any]:
        """A new pull request comment as GitHub (or Gitea) sends it: a fresh id, written now
        unless `written` says when."""
        comment_id = next(_ids)
        payload: dict[str, Any] = {
            "action": "created",
            "issue": {"number": number, "user": {"login": "someone"}},
            "comment": {
                "id": comment_id,
                "created_at": written or now_iso(),
                "body": text,
                "user": {"login": user, "type": "User"},
                "html_url": f"https://forge.example/{REPO}/pull/{number}#issuecomment-{comment_id}",
            },
            "repository": {"full_name": REPO, "clone_url": str(self.app)},
            "sender": {"login": user, "type": "User"},
        }
        if gitea:
            payload["is_pull"] = True
        else:
            payload["issue"]["pull_request"] = {"url": "u"}
        return payload

    # -- what the runner says ----------------------------------------------------------------------
    def api(self, path: str) -> Any:
        answer = httpx.get(
            f"{self.base}{path}", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
        )
        answer.raise_for_status()
        return answer.json()

    def runs_of(self, number: int) -> list[dict[str, Any]]:
        runs = self.api("/api/runs?limit=100")["items"]
        return sorted(
            (r for r in runs if (r["trigger"].get("pull_request") or {}).get("number") == number),
            key=lambda r: r["id"],
        )

    def gates(self, run_id: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api(f"/api/runs/{run_id}")["approvals"]
        return found

    def waiting(self, number: int, count: int = 1) -> list[dict[str, Any]]:
        """The runs of PR `number` once `count` of them wait at their gate."""

        def ready() -> bool:
            runs = [r for r in self.runs_of(number) if r["status"] == "waiting_approval"]
            return len(runs) >= count

        wait_for(ready)
        return [r for r in self.runs_of(number) if r["status"] == "waiting_approval"]

    def replies(self, number: int) -> list[str]:
        return [body for _, n, body in self.github.comments if n == number and "<!--" not in body]

    def reply_saying(self, number: int, text: str) -> str:
        found: list[str] = []

        def said() -> bool:
            found[:] = [r for r in self.replies(number) if text in r]
            return bool(found)

        wait_for(said)
        return found[-1]

    def metric(self, line: str) -> bool:
        return line in httpx.get(f"{self.base}/metrics", timeout=10).text


GATED = """\
apiVersion: runner/v1
kind: Workflow
metadata: {name: pr-gate}
spec:
  triggers: [{pull_request: {types: [opened, synchronize, reopened]}}]
  steps:
    - {id: check, agent: hello}
    - id: ship
      agent: hello
      needs: [check]
      approval: {approvers: [alice, bob, carol, dave, erin]}
"""


def app_repository(root: Path) -> tuple[Path, list[str]]:
    """A git repository with two commits (two pull request heads)."""
    work = root / "app"
    git(root, "init", "-q", "-b", "main", str(work))
    heads = []
    for i in range(2):
        (work / "main.py").write_text(f"print({i})\n")
        git(work, "add", "-A")
        git(work, "commit", "-q", "-m", f"change {i}")
        heads.append(git(work, "rev-parse", "HEAD"))
    return work, heads


@contextmanager
def service(root: Path, github: FakeGitHub, *, extra: str = "") -> Iterator[Service]:
    """`runner serve` on a workflows folder holding `pr-gate`, with forges `github` and
    `gitea` whose API is `github` (the fake) and an admin API token."""
    workflows = root / "workflows-repo"
    (workflows / "workflows").mkdir(parents=True)
    (workflows / "agents" / "hello").mkdir(parents=True)
    (workflows / "workflows" / "gate.yaml").write_text(GATED)
    (workflows / "agents" / "hello" / "agent.yaml").write_text(AGENT)
    (workflows / "agents" / "hello" / "main.py").write_text(ECHO)
    app, heads = app_repository(root)
    port = free_port()
    home = root / "svc"
    home.mkdir()
    (home / "runner.yaml").write_text(
        f"listen: {{port: {port}}}\n"
        f"sources: [{{name: main, url: '{workflows}', interval: 1s}}]\n"
        "executor: {sandbox: false}\n"
        "api: {tokens: [{name: ops, role: admin, token_env: OPS_TOKEN}]}\n"
        "forges:\n"
        f"  - {{name: github, kind: github, api_url: '{github.url}', token_env: GH_TOKEN,"
        " webhook_secret_env: GH_SECRET}\n"
        f"  - {{name: gitea, kind: gitea, api_url: '{github.url}', token_env: GT_TOKEN,"
        " webhook_secret_env: GT_SECRET}\n" + extra
    )
    env = {
        **os.environ,
        "GH_SECRET": SECRETS["github"],
        "GT_SECRET": SECRETS["gitea"],
        "GH_TOKEN": "gh-api-token",
        "GT_TOKEN": "gt-api-token",
        "OPS_TOKEN": ADMIN,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve"],
        cwd=home,
        env=env,
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
        yield Service(base=base, github=github, app=app, heads=heads)
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
        for secret in (*SECRETS.values(), "gh-api-token", "gt-api-token", ADMIN):
            assert secret not in errors
