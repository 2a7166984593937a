"""Rate limits and readiness over real HTTP: burst then 429 with its headers, refill, one bucket
per client, X-Forwarded-For only from trusted proxies, the allowlist, and /readyz flipping
when the real PostgreSQL server stops and recovering when it returns."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runner.web.app import create_app
from runner.web.ratelimit import Buckets, RateLimits, endpoint_class
from tests.pg import LocalCluster
from tests.test_serve import wait_for
from tests.web.service import serve

TOKENS = {"T_VIEWER": "viewer-t0ken-limits-1", "T_OP": "operator-t0ken-limits-2"}
CONFIG = """\
api:
  tokens:
    - {name: viewer, role: viewer, token_env: T_VIEWER}
    - {name: op, role: operator, token_env: T_OP}
rate_limits: {reads: 20/minute, writes: 2/minute, webhooks: 3/minute, allow: [10.9.0.0/16]}
trusted_proxies: [127.0.0.1/32]
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("limits"), CONFIG, TOKENS) as url:
        yield url


def get(base: str, client: str, path: str = "/api/runs") -> httpx.Response:
    return httpx.get(
        base + path,
        headers={"Authorization": f"Bearer {TOKENS['T_VIEWER']}", "X-Forwarded-For": client},
    )


def test_a_burst_is_refused_with_429_and_refills(base: str) -> None:
    # a token flows back every 3 s: on a loaded machine one may come back during the burst,
    # so the burst goes on until the first refusal rather than counting on exactly 20
    answers = [get(base, "203.0.113.7") for _ in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    assert answers[0].headers["ratelimit-limit"] == "20"
    assert answers[0].headers["ratelimit-remaining"] == "19"
    while (refused := get(base, "203.0.113.7")).status_code == 200:
        answers.append(refused)
        assert len(answers) < 40, "the bucket never ran dry"
    assert answers[-1].headers["ratelimit-remaining"] == "0"
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 3  # a token flows back every 3 s
    assert refused.headers["ratelimit-remaining"] == "0"
    assert 55 <= int(refused.headers["ratelimit-reset"]) <= 60  # until the bucket is full
    assert refused.json()["error"]["code"] == "rate_limited"
    assert get(base, "203.0.113.8").status_code == 200  # another client, its own bucket
    time.sleep(int(refused.headers["retry-after"]) + 0.2)
    assert get(base, "203.0.113.7").status_code == 200  # refilled: one more
    assert get(base, "203.0.113.7").status_code == 429


def test_a_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = Buckets("6/minute", clock=lambda: now[0])
    assert [bucket.take("a")[0] for _ in range(7)] == [True] * 6 + [False]
    allowed, left, next_token, full = bucket.take("a")
    assert (allowed, left, next_token, full) == (False, 0, 10.0, 60.0)
    now[0] = 9.9
    assert bucket.take("a")[0] is False
    now[0] = 10.0
    assert bucket.take("a")[:2] == (True, 0)
    now[0] = 1000.0
    assert bucket.take("a")[:2] == (True, 5)  # never more than the allowance


def test_classes_are_separate_and_health_is_never_limited(base: str) -> None:
    for _ in range(3):
        assert httpx.post(base + "/hooks/none", content=b"{}").status_code == 404
    assert httpx.post(base + "/hooks/none", content=b"{}").status_code == 429
    headers = {"Authorization": f"Bearer {TOKENS['T_OP']}"}
    writes = [httpx.post(base + "/api/runs/1/cancel", headers=headers) for _ in range(3)]
    assert [w.status_code for w in writes] == [404, 404, 429]
    assert get(base, "198.51.100.1").status_code == 200  # reads have their own allowance
    assert all(httpx.get(base + "/healthz").status_code == 200 for _ in range(20))
    text = httpx.get(base + "/metrics").text
    assert 'runner_rate_limited_total{endpoint_class="webhooks"} 1.0' in text
    assert 'runner_rate_limited_total{endpoint_class="writes"} 1.0' in text


def test_the_allowlist_bypasses_the_limits(base: str) -> None:
    answers = [get(base, "10.9.4.2") for _ in range(25)]
    assert {a.status_code for a in answers} == {200}
    assert "ratelimit-limit" not in answers[-1].headers


def scope(peer: str) -> dict[str, object]:
    return {"type": "http", "client": (peer, 5000), "headers": []}


@pytest.mark.anyio
async def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    app = create_app({}, rate_limits={"reads": "2/minute"}, trusted_proxies=["10.0.0.0/8"])

    async def status(peer: str, forwarded: str | None = None) -> int:
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        transport = httpx.ASGITransport(app=app, client=(peer, 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://runner") as client:
            return (await client.get("/openapi.json", headers=headers)).status_code

    # not a proxy: its own address, whatever it claims to forward
    assert [await status("203.0.113.9", f"1.2.3.{i}") for i in range(3)] == [200, 200, 429]
    # a trusted proxy: the right-most address that is not itself a trusted proxy; a client
    # cannot spoof past it by prepending addresses
    assert await status("10.1.1.1", "6.6.6.6, 1.2.3.4, 10.2.2.2") == 200
    assert await status("10.1.1.1", "7.7.7.7, 1.2.3.4") == 200
    assert await status("10.1.1.1", "1.2.3.4") == 429
    assert await status("10.1.1.1") == 200  # nothing forwarded: the proxy itself


def test_client_addresses_and_their_buckets() -> None:
    # an IPv4 client on a dual-stack socket is itself; a global IPv6 client counts by its /64
    assert RateLimits.client(scope("::ffff:1.2.3.4")) == "1.2.3.4"
    assert RateLimits.bucket_key("2600:1f18:1:2:aaaa::1") == "2600:1f18:1:2::/64"
    assert RateLimits.bucket_key("2600:1f18:1:2:bbbb::9") == "2600:1f18:1:2::/64"
    assert RateLimits.bucket_key("::1") == "::1"  # not global: its own
    assert RateLimits.bucket_key("1.2.3.4") == "1.2.3.4"


def test_endpoint_classes() -> None:
    assert endpoint_class("POST", "/hooks/github") == "webhooks"
    assert endpoint_class("POST", "/api/workflows/a/runs") == "triggers"
    assert endpoint_class("POST", "/api/runs/1/cancel") == "writes"
    assert endpoint_class("GET", "/api/runs") == "reads"
    assert endpoint_class("GET", "/healthz") is None
    assert endpoint_class("GET", "/metrics") is None


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    local = LocalCluster()  # its own server: the test stops and starts it
    local.start()
    try:
        yield local
    finally:
        local.remove()


def test_readiness_follows_the_database(tmp_path: Path, own_cluster: LocalCluster) -> None:
    config = f"database: {{url: '{own_cluster.url}', connect_timeout: 2}}\n"
    with serve(tmp_path, config, {}, ready=True) as url:
        ready = httpx.get(url + "/readyz").json()
        assert ready["ready"] is True
        assert ready["checks"]["store"] == {"ok": True, "detail": "migrations current"}
        own_cluster.stop()
        down = httpx.get(url + "/readyz", timeout=10)
        assert down.status_code == 503
        body = down.json()
        assert body["ready"] is False
        assert body["checks"]["store"]["ok"] is False
        assert "executor" not in body["checks"]  # the web role runs no steps
        assert httpx.get(url + "/healthz").status_code == 200  # alive, just not ready
        own_cluster.start()
        wait_for(lambda: httpx.get(url + "/readyz", timeout=10).status_code == 200, timeout=60)
