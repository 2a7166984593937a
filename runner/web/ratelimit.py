"""Rate limits per client and endpoint class, as ASGI middleware: a token bucket per client and
class. A bucket holds the whole allowance (`100/minute`: 100 tokens, parsed by the `limits`
library), a request takes one, and tokens flow back at the allowance's rate, so a client may
spend its allowance at once and then goes on at the steady rate. (`limits` has no token bucket,
and its in-memory storage starts a timer thread every 10 ms under load, measured at a tenth of
the webhook path's CPU; the bucket itself is a few lines of arithmetic.)

Classes: `webhooks` (/hooks/*), `triggers` (POST /api/workflows/{name}/runs), `writes` (any
other non-GET /api/*), `reads` (GET /api/*, /openapi.json). Health, readiness and metrics are
never limited. The client is the connection's client address as the app sees it: the peer,
or, behind a configured trusted proxy, the address uvicorn's proxy-headers middleware (in front
of this one, see `app.py`) took from `X-Forwarded-For`. Networks in `allow` bypass the limits.
A refused request gets 429 with `Retry-After` and `RateLimit-Limit`/`-Remaining`/`-Reset`;
an allowed one gets the `RateLimit-*` headers too.
"""

from __future__ import annotations

import ipaddress
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any

import limits
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULTS = {
    "webhooks": "600/minute",
    "triggers": "500/minute",
    "writes": "100/minute",
    "reads": "1000/minute",
}
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(values: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(v, strict=False) for v in values]


@lru_cache(maxsize=4096)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _inside(address: str, networks: list[Network]) -> bool:
    if not networks:
        return False
    ip = _address(address)
    return ip is not None and any(ip in net for net in networks)


class Buckets:
    """Token buckets of one allowance, by client; idle full buckets are forgotten."""

    def __init__(self, rate: str, clock: Callable[[], float] = time.monotonic) -> None:
        item = limits.parse(rate)
        self.rate = rate
        self.capacity = float(item.amount)
        self.per_second = item.amount / item.get_expiry()
        self.clock = clock
        self.state: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._swept = 0.0

    def take(self, client: str) -> tuple[bool, int, float, float]:
        """(allowed, tokens left, seconds until one token is back, seconds until full)."""
        now = self.clock()
        tokens, at = self.state.get(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.per_second)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(self.state) > 10_000 and now - self._swept > 1.0:  # many clients: tidy, rarely
            self._swept = now
            self._forget(now)
        self.state[client] = (tokens, now)
        next_token = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.per_second
        return allowed, int(tokens), next_token, (self.capacity - tokens) / self.per_second

    def _forget(self, now: float) -> None:
        full = [
            c
            for c, (tokens, at) in self.state.items()
            if tokens + (now - at) * self.per_second >= self.capacity
        ]
        for client in full:
            del self.state[client]


def endpoint_class(method: str, path: str) -> str | None:
    if path.startswith("/hooks/"):
        return "webhooks"
    if path == "/openapi.json":
        return "reads"
    if not path.startswith("/api/"):
        return None
    if method in ("GET", "HEAD"):
        return "reads"
    if path.startswith("/api/workflows/") and path.endswith("/runs"):
        return "triggers"
    return "writes"


class RateLimits:
    def __init__(
        self,
        app: ASGIApp,
        *,
        config: Mapping[str, Any],
        on_limited: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.app = app
        self.buckets = {
            name: Buckets(str(config.get(name, default))) for name, default in DEFAULTS.items()
        }
        self.allow = _networks(config.get("allow", ()))
        self.on_limited = on_limited

    @staticmethod
    def client(scope: Scope) -> str:
        """The client's address (an IPv4 client seen through a dual-stack socket as itself)."""
        address = str(scope["client"][0]) if scope.get("client") else ""
        ip = _address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return address

    @staticmethod
    def bucket_key(client: str) -> str:
        """Who the limits count: the client, or a global IPv6 client by its /64 (one host
        commonly holds a whole /64, so single addresses would be free to vary)."""
        ip = _address(client)
        if isinstance(ip, ipaddress.IPv6Address) and ip.is_global:
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = endpoint_class(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        client = self.client(scope)
        if _inside(client, self.allow):
            await self.app(scope, receive, send)
            return
        bucket = self.buckets[kind]
        allowed, left, next_token, full = bucket.take(self.bucket_key(client))
        headers = [
            (b"ratelimit-limit", str(int(bucket.capacity)).encode()),
            (b"ratelimit-remaining", str(left).encode()),
            (b"ratelimit-reset", str(math.ceil(full)).encode()),
        ]
        if not allowed:
            retry = max(1, math.ceil(next_token))
            self.on_limited(kind)
            body = json.dumps(
                {
                    "error": {
                        "code": "rate_limited",
                        "message": f"over the {kind} limit of {bucket.rate}; retry in {retry}s",
                    }
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", str(retry).encode()),
                        *headers,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
