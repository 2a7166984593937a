"""What every forge client shares: one httpx client, calls retried on transport errors, 5xx and
rate limits (429, or GitHub's 403 with no requests left) with jittered backoff that honours a
short `Retry-After`, answers cached briefly, and every call counted in the metrics."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from runner import metrics
from runner.errors import TransientError

TRIES = 4


def _limited(response: httpx.Response) -> bool:
    return response.status_code == 429 or (
        response.status_code == 403 and response.headers.get("x-ratelimit-remaining") == "0"
    )


def _retry_after(response: httpx.Response) -> float:
    """`Retry-After` in seconds, bounded: a long wait is the caller's to make."""
    try:
        return min(float(response.headers.get("retry-after", "0")), 10.0)
    except ValueError:
        return 0.0


class ApiClient:
    kind = "forge"  # github, gitea, gitlab: the label of its metrics and errors

    def __init__(
        self,
        api_url: str,
        headers: Mapping[str, str],
        *,
        cache_seconds: float = 60.0,
        backoff: float = 0.5,
    ) -> None:
        self.http = httpx.AsyncClient(
            base_url=api_url.rstrip("/"), headers={**headers, "User-Agent": "runner"}, timeout=10.0
        )
        self.cache_seconds = cache_seconds
        self.backoff = backoff
        self._cache: dict[tuple[str, ...], tuple[float, Any]] = {}

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer to a request, or TransientError once retries are spent."""
        delay = self.backoff
        for attempt in range(TRIES):
            try:
                response = await self.http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                metrics.forge_call(self.kind, None)
                error, wait = type(exc).__name__, delay
            else:
                metrics.forge_call(self.kind, response.status_code)
                if response.status_code < 500 and not _limited(response):
                    return response
                error, wait = f"HTTP {response.status_code}", max(delay, _retry_after(response))
            if attempt < TRIES - 1:
                await asyncio.sleep(wait * (1 + random.random()))
                delay *= 2
        raise TransientError(f"{self.kind} {method} {path} failed: {error}")

    async def _pages(
        self, path: str, params: Mapping[str, Any] | None = None, *, most: int = 30
    ) -> AsyncIterator[list[Any]]:
        """The pages (100 items each) of a listing, up to `most` pages; a page that cannot be
        had is a TransientError."""
        for page in range(1, most + 1):
            answer = await self._call(
                "GET", path, params={**(params or {}), "per_page": 100, "page": page}
            )
            if answer.status_code != 200:
                raise TransientError(f"{self.kind} GET {path}: HTTP {answer.status_code}")
            batch: list[Any] = answer.json()
            yield batch
            if len(batch) < 100:
                return

    async def me(self) -> str | None:
        """The login of the token's own user (GET /user), or None when the forge cannot say."""

        async def fetch() -> str | None:
            answer = await self._call("GET", "/user")
            if answer.status_code != 200:
                return None
            data = answer.json()
            name = data.get("login") or data.get("username")
            return str(name) if name else None

        found: str | None = await self._cached(("me",), fetch)
        return found

    async def _cached(self, key: tuple[str, ...], fetch: Any) -> Any:
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.cache_seconds:
            return hit[1]
        value = await fetch()
        self._cache[key] = (time.monotonic(), value)
        return value
