"""Rate limits per client and endpoint class, as ASGI middleware on top of the `limits` library
(moving window, in memory: a client may spend its whole allowance at once, and each request
frees its slot again one window after it was made).

Classes: `webhooks` (/hooks/*), `triggers` (POST /api/workflows/{name}/runs), `writes` (any
other non-GET /api/*), `reads` (GET /api/*, /openapi.json). Health, readiness and metrics are
never limited. The client is the peer address; `X-Forwarded-For` is believed only when the peer
is a configured trusted proxy, and then the client is the right-most address not itself a
trusted proxy. Networks in `allow` bypass the limits. A refused request gets 429 with
`Retry-After` and `RateLimit-Limit`/`-Remaining`/`-Reset`; an allowed one gets the `RateLimit-*`
headers too.
"""

from __future__ import annotations

import ipaddress
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import limits
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
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


def _inside(address: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


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
        trusted_proxies: Iterable[str] = (),
        on_limited: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.app = app
        self.items = {
            name: limits.parse(str(config.get(name, default))) for name, default in DEFAULTS.items()
        }
        self.allow = _networks(config.get("allow", ()))
        self.trusted = _networks(trusted_proxies)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.on_limited = on_limited

    def client(self, scope: Scope) -> str:
        peer = scope["client"][0] if scope.get("client") else ""
        if not _inside(peer, self.trusted):
            return str(peer)
        forwarded = [
            value.decode("latin-1")
            for key, value in scope.get("headers", ())
            if key == b"x-forwarded-for"
        ]
        hops = [h.strip() for line in forwarded for h in line.split(",") if h.strip()]
        for hop in reversed(hops):
            if not _inside(hop, self.trusted):
                return str(hop)
        return str(peer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = endpoint_class(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        client = self.client(scope)
        if _inside(client, self.allow):
            await self.app(scope, receive, send)
            return
        item = self.items[kind]
        allowed = self.limiter.hit(item, kind, client)
        stats = self.limiter.get_window_stats(item, kind, client)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        headers = [
            (b"ratelimit-limit", str(item.amount).encode()),
            (b"ratelimit-remaining", str(stats.remaining).encode()),
            (b"ratelimit-reset", str(reset).encode()),
        ]
        if not allowed:
            self.on_limited(kind)
            body = json.dumps(
                {
                    "error": {
                        "code": "rate_limited",
                        "message": f"over the {kind} limit of {item}; retry in {max(reset, 1)}s",
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
                        (b"retry-after", str(max(reset, 1)).encode()),
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
