"""With PostgreSQL stopped, `runner serve` answers what needs the store with 503, the error
shape and `Retry-After` (a forge redelivers, a client retries) instead of hanging; once the
database is back the same requests succeed, without restarting the service."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.pg import LocalCluster
from tests.test_serve import wait_for
from tests.web.service import serve

SECRET = "store-down-webhook-secret"
TOKEN = "store-down-viewer-t0ken"


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    local = LocalCluster()  # its own server: the test stops and starts it
    local.start()
    try:
        yield local
    finally:
        local.remove()


def deliver(base: str, delivery: str) -> httpx.Response:
    """A signed GitHub push delivery."""
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": hashlib.sha1(delivery.encode()).hexdigest(),  # one body per delivery
            "repository": {"full_name": "acme/app", "clone_url": "https://example.invalid/a.git"},
            "sender": {"login": "dev"},
        }
    ).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(
        f"{base}/hooks/github",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature,
        },
        timeout=30,
    )


def assert_store_unavailable(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["Retry-After"]) > 0
    error = answer.json()["error"]
    assert error["code"] == "store_unavailable"
    assert "database" in error["message"]
    assert "try again" in error["message"]


def test_requests_that_need_the_store_fail_fast_and_recover(
    tmp_path: Path, own_cluster: LocalCluster
) -> None:
    config = (
        f"database: {{url: '{own_cluster.url}', connect_timeout: 2}}\n"
        "api:\n  tokens:\n    - {name: v, role: viewer, token_env: T_VIEW}\n"
        "forges:\n  - {name: github, kind: github, webhook_secret_env: GH_SECRET}\n"
    )
    env = {"T_VIEW": TOKEN, "GH_SECRET": SECRET}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serve(tmp_path, config, env, ready=True) as base:
        assert deliver(base, "before").status_code == 202
        assert httpx.get(f"{base}/api/runs", headers=auth).status_code == 200

        own_cluster.stop()
        assert_store_unavailable(deliver(base, "during"))
        assert_store_unavailable(httpx.get(f"{base}/api/runs", headers=auth, timeout=30))
        assert httpx.get(f"{base}/healthz").status_code == 200  # alive: not restarted

        own_cluster.start()  # the service recovers by itself
        wait_for(
            lambda: httpx.get(f"{base}/api/runs", headers=auth, timeout=30).status_code == 200,
            timeout=60,
        )
        answer = deliver(base, "during")  # GitHub's redelivery of the refused one
        assert answer.status_code == 202, answer.text
        assert deliver(base, "during").json()["status"] == "duplicate"
