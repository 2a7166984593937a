"""The HTTP service: health and readiness, webhook receivers, the REST API and its description,
Prometheus metrics, and the web UI (`ui.html`: one page that uses the API with a token the user
pastes); rate limits in front of all of it.

The client address is the peer's. Only when the peer is in `trusted_proxies` (empty by default)
is `X-Forwarded-For` read, by uvicorn's proxy-headers middleware, the right-most address that is
not itself a trusted proxy becoming the client; the server's own proxy-header handling is off
(`services.py`), so without trusted proxies nobody chooses their address. `Forwarded` (RFC 7239)
is never read."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from runner import metrics
from runner.store.budget import fail_fast
from runner.web.api import Api
from runner.web.errors import HANDLERS
from runner.web.hooks import Hooks
from runner.web.openapi import description
from runner.web.ratelimit import RateLimits

log = logging.getLogger(__name__)
Check = Callable[[], Awaitable[tuple[bool, str]]]
STORE_BUDGET = 2.5  # seconds a request's store call may retry: a 503 well within 3 s


class StoreBudget:
    """Every request's store calls give up after `budget` seconds (`runner.store.budget`): a
    database that is away makes a request answer 503 with Retry-After, not hang."""

    def __init__(self, app: ASGIApp, *, budget: float = STORE_BUDGET) -> None:
        self.app, self.budget = app, budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with fail_fast(self.budget):
            await self.app(scope, receive, send)


def create_app(
    checks: dict[str, Check],
    *,
    hooks: Hooks | None = None,
    api: Api | None = None,
    refresh_metrics: Callable[[], Awaitable[None]] | None = None,
    rate_limits: Mapping[str, Any] | None = None,
    trusted_proxies: Iterable[str] = (),
    deadline: float = 2.0,
    store_budget: float = STORE_BUDGET,
    executor_state: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
) -> Starlette:
    """`checks` decide readiness; `executor_state` (worker replicas) is reported in the
    readiness body and never decides it (docs/operations.md, "Monitoring")."""

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        results = {}
        for name, check in checks.items():
            try:
                ok, detail = await asyncio.wait_for(check(), timeout=deadline)
            except TimeoutError:
                ok, detail = False, f"no answer within {deadline:g}s"
            except Exception as exc:  # a failing check is a "not ready", never a crash
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            results[name] = {"ok": ok, "detail": detail}
        ready = all(r["ok"] for r in results.values())
        if not ready:
            log.warning(
                "not ready: %s", {k: v["detail"] for k, v in results.items() if not v["ok"]}
            )
        body: dict[str, Any] = {"ready": ready, "checks": results}
        if executor_state is not None:
            try:
                body["executor"] = dict(await asyncio.wait_for(executor_state(), deadline))
            except Exception as exc:  # described, never a crash, and never "not ready"
                body["executor"] = {"detail": f"{type(exc).__name__}: {exc}"}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def scrape(request: Request) -> Response:
        if refresh_metrics is not None:
            try:
                await asyncio.wait_for(refresh_metrics(), timeout=deadline)
                metrics.STORE_UP.set(1)
            except Exception as exc:  # stale gauges beat no metrics at all
                metrics.STORE_UP.set(0)
                log.warning("refreshing metrics from the store: %s", exc or type(exc).__name__)
        body, kind = metrics.exposition()
        return Response(body, media_type=kind)

    spec = description()

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(spec)

    page = resources.files("runner.web").joinpath("ui.html").read_bytes()

    async def ui(request: Request) -> Response:
        return Response(
            page,
            media_type="text/html; charset=utf-8",
            headers={
                "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", scrape),
        Route("/openapi.json", openapi),
        Route("/", ui),
    ]
    if hooks is not None:
        routes += hooks.routes()
    if api is not None:
        routes += api.routes()
    middleware = [
        Middleware(StoreBudget, budget=store_budget),
        Middleware(
            RateLimits,
            config=dict(rate_limits or {}),
            on_limited=lambda kind: metrics.RATE_LIMITED.labels(kind).inc(),
        ),
    ]
    proxies = list(trusted_proxies)
    if proxies:  # first: everything after it (limits, allowlist, access log) sees the client
        middleware.insert(0, Middleware(ProxyHeadersMiddleware, trusted_hosts=proxies))
    return Starlette(routes=routes, middleware=middleware, exception_handlers=HANDLERS)
