"""Webhook receivers over real HTTP (`runner serve --role web`): signatures of all three forges
and the generic hook, GitHub's own example payloads signed by GitHub's own signing code,
dedupe, rotation, size and content-type limits. Nothing refused is stored."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runner.model import Event
from runner.store.base import open_store
from tests.conftest import apply_example
from tests.npm import github_examples, octokit_sign
from tests.test_serve import free_port

FIXTURES = Path(__file__).parents[1] / "fixtures"
SECRETS = {
    "GH_SECRET": "old-gh-secret,new-gh-secret",
    "GL_TOKEN": "gl-token-1",
    "GT_SECRET": "gitea-s3cret",
    "GENERIC": "generic-s3cret",
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    home = tmp_path_factory.mktemp("hooks")
    port = free_port()
    (home / "runner.yaml").write_text(
        f"listen: {{port: {port}, max_body_bytes: 65536}}\n"
        "forges:\n"
        "  - {name: github, kind: github, webhook_secret_env: GH_SECRET}\n"
        "  - {name: gitlab, kind: gitlab, webhook_secret_env: GL_TOKEN}\n"
        "  - {name: gitea, kind: gitea, webhook_secret_env: GT_SECRET}\n"
        "generic_webhook_secret_env: GENERIC\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve", "--role", "web"],
        cwd=home,
        env={**os.environ, **SECRETS},
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    try:
        yield base, home
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def events(home: Path) -> list[Event]:
    async def read() -> list[Event]:
        store = open_store(f"sqlite:///{home}/runner.db")
        await store.open()
        try:
            return await store.claim_events("reader", 0.001, 1000)
        finally:
            await store.close()

    return asyncio.run(read())


def post(base: str, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{base}{path}", content=body, headers={"Content-Type": "application/json", **headers}
    )


def test_github_example_signed_by_octokit_is_stored_once(service: tuple[str, Path]) -> None:
    base, home = service
    payload = json.dumps(github_examples("push")[0])
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "d-push-1",
        "X-Hub-Signature-256": octokit_sign("new-gh-secret", payload),
    }
    first = post(base, "/hooks/github", payload.encode(), headers)
    assert first.status_code == 202, first.text
    again = post(base, "/hooks/github", payload.encode(), headers)
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    stored = [e for e in events(home) if e.delivery_id == "d-push-1"]
    assert len(stored) == 1
    assert stored[0].event_type == "push"
    assert json.loads(stored[0].body) == json.loads(payload)
    assert "x-hub-signature-256" not in stored[0].headers


def test_rotation_accepts_the_old_secret_too(service: tuple[str, Path]) -> None:
    base, _ = service
    payload = json.dumps(github_examples("issue_comment")[0]).encode()
    signature = "sha256=" + hmac.new(b"old-gh-secret", payload, hashlib.sha256).hexdigest()
    headers = {
        "X-GitHub-Event": "issue_comment",
        "X-GitHub-Delivery": "d-c-1",
        "X-Hub-Signature-256": signature,
    }
    assert post(base, "/hooks/github", payload, headers).status_code == 202


@pytest.mark.parametrize(
    ("signature", "why"),
    [(None, "missing"), ("sha256=" + "0" * 64, "forged"), ("sha1=abc", "wrong scheme")],
)
def test_bad_signatures_are_401_and_store_nothing(
    service: tuple[str, Path], signature: str | None, why: str
) -> None:
    base, home = service
    body = json.dumps(github_examples("push")[1]).encode()
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": f"d-bad-{why}"}
    if signature:
        headers["X-Hub-Signature-256"] = signature
    answer = post(base, "/hooks/github", body, headers)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "bad_signature"
    assert not [e for e in events(home) if e.delivery_id == f"d-bad-{why}"]


def test_oversized_and_non_json_bodies_are_refused(service: tuple[str, Path]) -> None:
    base, _ = service
    big = b'{"x": "' + b"a" * 70_000 + b'"}'
    signature = "sha256=" + hmac.new(b"new-gh-secret", big, hashlib.sha256).hexdigest()
    answer = post(
        base, "/hooks/github", big, {"X-Hub-Signature-256": signature, "X-GitHub-Event": "push"}
    )
    assert answer.status_code == 413
    form = httpx.post(
        f"{base}/hooks/github",
        content=b"payload=%7B%7D",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415
    assert "application/json" in form.json()["error"]["message"]


def test_ping_is_answered(service: tuple[str, Path]) -> None:
    base, _ = service
    body = json.dumps(github_examples("ping")[0]).encode()
    signature = "sha256=" + hmac.new(b"new-gh-secret", body, hashlib.sha256).hexdigest()
    answer = post(
        base, "/hooks/github", body, {"X-Hub-Signature-256": signature, "X-GitHub-Event": "ping"}
    )
    assert answer.json() == {"status": "pong"}


def test_gitlab_token_and_gitea_signature(service: tuple[str, Path]) -> None:
    base, home = service
    body = (FIXTURES / "gitlab" / "note_hook_mr.json").read_bytes()
    gitlab = {"X-Gitlab-Event": "Note Hook", "X-Gitlab-Event-UUID": "gl-uuid-1"}
    assert (
        post(base, "/hooks/gitlab", body, {**gitlab, "X-Gitlab-Token": "nope"}).status_code == 401
    )
    assert (
        post(base, "/hooks/gitlab", body, {**gitlab, "X-Gitlab-Token": "gl-token-1"}).status_code
        == 202
    )
    body = (FIXTURES / "gitea" / "issue_comment_pull.json").read_bytes()
    gitea_sig = hmac.new(b"gitea-s3cret", body, hashlib.sha256).hexdigest()
    gitea = {
        "X-Gitea-Event": "issue_comment",
        "X-Gitea-Delivery": "gt-1",
        "X-Gitea-Signature": gitea_sig,
    }
    assert post(base, "/hooks/gitea", body, gitea).status_code == 202
    stored = {(e.forge, e.event_type): e for e in events(home)}
    assert "x-gitlab-token" not in stored[("gitlab", "Note Hook")].headers  # the secret is not kept
    assert ("gitea", "issue_comment") in stored
    unknown = post(base, "/hooks/bitbucket", body, {})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_forge")


def apply_example_to(home: Path) -> None:
    async def apply() -> None:
        store = open_store(f"sqlite:///{home}/runner.db")
        await store.open()
        try:
            await apply_example(store)
        finally:
            await store.close()

    asyncio.run(apply())


def test_generic_hook_starts_a_run_with_validated_inputs(service: tuple[str, Path]) -> None:
    base, home = service
    apply_example_to(home)

    def send(workflow: str, body: bytes, delivery: str) -> httpx.Response:
        signature = "sha256=" + hmac.new(b"generic-s3cret", body, hashlib.sha256).hexdigest()
        headers = {"X-Runner-Signature": signature, "X-Runner-Delivery": delivery}
        return post(base, f"/hooks/generic/{workflow}", body, headers)

    good = send("deploy-check", b'{"service": "api", "version": "1.2.3"}', "deploy-1")
    assert good.status_code == 202, good.text
    again = send("deploy-check", b'{"service": "api", "version": "1.2.3"}', "deploy-1")
    assert (again.status_code, again.json()["run"]) == (200, good.json()["run"])
    bad = send("deploy-check", b'{"service": "api"}', "deploy-2")
    assert bad.status_code == 422
    assert "missing required property 'version'" in bad.json()["error"]["message"]
    other = send("pr-security-review", b"{}", "deploy-3")
    assert (other.status_code, other.json()["error"]["code"]) == (404, "unknown_workflow")

    async def run_inputs() -> dict[str, object]:
        store = open_store(f"sqlite:///{home}/runner.db")
        await store.open()
        try:
            run = await store.get_run(int(good.json()["run"]))
            assert run is not None
            return {
                "workflow": run.workflow,
                "inputs": dict(run.inputs),
                "event": run.trigger["event"],
            }
        finally:
            await store.close()

    assert asyncio.run(run_inputs()) == {
        "workflow": "deploy-check",
        "inputs": {"service": "api", "version": "1.2.3"},
        "event": "webhook",
    }
