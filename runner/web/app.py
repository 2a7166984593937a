"""The HTTP service: health, readiness and webhook receivers (the API and the UI come later)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from runner.web.hooks import Hooks

Check = Callable[[], Awaitable[tuple[bool, str]]]


def create_app(
    checks: dict[str, Check], *, hooks: Hooks | None = None, deadline: float = 2.0
) -> Starlette:
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
        return JSONResponse({"ready": ready, "checks": results}, status_code=200 if ready else 503)

    routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
    if hooks is not None:
        routes += hooks.routes()
    return Starlette(routes=routes)
