"""Client identity from trusted proxies only (issue 15, item 4), against a running `runner serve`:
with no trusted proxy (the default), a client on loopback sending `X-Forwarded-For` or
`Forwarded` chooses nothing — not its rate-limit bucket, not the allowlist, not the address in
the access log; behind a configured trusted proxy, the forwarded address is the client in all
three alike."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.test_serve import free_port, wait_for

TOKEN = "viewer-token-for-proxies"
CONFIG = """\
logging: {format: console, access: true}
api: {tokens: [{name: viewer, role: viewer, token_env: VIEWER_TOKEN}]}
rate_limits: {reads: 3/minute, allow: [10.9.0.0/16]}
"""


@contextmanager
def serve(home: Path, extra: str) -> Iterator[tuple[str, Path]]:
    """`runner serve --role web` with CONFIG + `extra`; (base URL, file of its stderr)."""
    port = free_port()
    (home / "runner.yaml").write_text(f"listen: {{port: {port}}}\n{CONFIG}{extra}")
    log = home / "stderr.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "runner", "serve", "--role", "web"],
            cwd=home,
            env={**os.environ, "VIEWER_TOKEN": TOKEN},
            stderr=sink,
        )
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(base + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(up)
            yield base, log
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    assert TOKEN not in log.read_text()


def read(base: str, headers: dict[str, str]) -> int:
    answer = httpx.get(
        base + "/api/runs", headers={"Authorization": f"Bearer {TOKEN}", **headers}, timeout=10
    )
    return answer.status_code


def test_without_trusted_proxies_forwarding_headers_choose_nothing(tmp_path: Path) -> None:
    with serve(tmp_path, "") as (base, log):
        spoofed = [
            {"X-Forwarded-For": "10.9.1.1"},  # an allowlisted address
            {"X-Forwarded-For": "203.0.113.1"},  # a fresh bucket each time
            {"X-Forwarded-For": "203.0.113.2"},
            {"Forwarded": "for=10.9.1.1"},
            {"Forwarded": 'for="[2001:db8::1]"'},
        ]
        # no address is trusted with the API: without a token, nothing (and it counts)
        anonymous = httpx.get(base + "/api/runs", headers={"X-Forwarded-For": "10.9.1.1"})
        assert anonymous.status_code == 401
        assert [read(base, h) for h in spoofed] == [200, 200, 429, 429, 429]
        wait_for(lambda: log.read_text().count('"GET /api/runs HTTP/1.1"') == 6)
        lines = [line for line in log.read_text().splitlines() if "GET /api/runs" in line]
        assert all("127.0.0.1:" in line for line in lines), lines
        assert not any("10.9.1.1" in line or "203.0.113" in line for line in lines), lines


def test_behind_a_trusted_proxy_the_forwarded_client_counts_everywhere(tmp_path: Path) -> None:
    with serve(tmp_path, "trusted_proxies: [127.0.0.1/32]\n") as (base, log):
        assert {read(base, {"X-Forwarded-For": "10.9.1.1"}) for _ in range(5)} == {200}
        client = {"X-Forwarded-For": "198.51.100.7"}
        assert [read(base, client) for _ in range(4)] == [200, 200, 200, 429]
        assert read(base, {"X-Forwarded-For": "198.51.100.8"}) == 200  # its own bucket
        # prepending an address does not move the client: the right-most untrusted one counts
        assert read(base, {"X-Forwarded-For": "10.9.1.1, 198.51.100.7"}) == 429
        # `Forwarded` is never read, even from a trusted proxy: the proxy itself is the client
        assert [read(base, {"Forwarded": "for=10.9.1.1"}) for _ in range(4)] == [200] * 3 + [429]
        wait_for(lambda: "198.51.100.8:" in log.read_text())
        assert "10.9.1.1:" in log.read_text()
