"""What every forge client shares: one httpx client, calls retried on transport errors and 5xx
with jittered backoff, answers cached briefly, and every call counted in the metrics.

The forge's rate limit is honoured: once its headers say that no request is left (GitHub and
Gitea `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset`, GitLab `RateLimit-Remaining: 0`
with `RateLimit-Reset`), or it refuses a call as rate limited (429, or 403 with no request
left, `Retry-After`), no call is made until the reset: every call fails at once meanwhile
(a TransientError saying until when), so a spent budget is never spent further."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from runner import metrics
from runner.errors import TransientError

log = logging.getLogger(__name__)
TRIES = 4
SHORT_WAIT = 10.0  # a rate-limited call told to retry within this is retried after waiting


class RateLimited(TransientError):
    """The forge's rate limit is spent: no call is made until `until` (epoch seconds)."""

    def __init__(self, message: str, until: float) -> None:
        super().__init__(message)
        self.until = until


def _remaining(response: httpx.Response) -> str | None:
    headers = response.headers
    found: str | None = headers.get("x-ratelimit-remaining", headers.get("ratelimit-remaining"))
    return found


def _limited(response: httpx.Response) -> bool:
    return response.status_code == 429 or (
        response.status_code == 403
        and (_remaining(response) == "0" or "retry-after" in response.headers)
    )


def _seconds_or_epoch(value: str, now: float) -> float | None:
    """A reset time: epoch seconds (GitHub, GitLab), or seconds from now when small."""
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number > 1_000_000_000 else now + max(number, 0.0)


def _retry_after(value: str, now: float) -> float | None:
    """`Retry-After`: delay seconds or an HTTP date (RFC 9110), as epoch seconds."""
    try:
        return now + max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def resume_at(response: httpx.Response, now: float) -> float | None:
    """Until when (epoch seconds) no further call may be made, as the answer's rate-limit
    headers say; None while requests are left or when they do not say."""
    headers = response.headers
    found: list[float] = []
    if _remaining(response) == "0":
        reset = headers.get("x-ratelimit-reset", headers.get("ratelimit-reset"))
        until = _seconds_or_epoch(reset, now) if reset else None
        found += [until] if until is not None else []
    if _limited(response) and "retry-after" in headers:
        after = _retry_after(headers["retry-after"], now)
        found += [after] if after is not None else []
    return max(found) if found else None


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
        self.resume_at = 0.0  # epoch seconds: no call before (the rate limit is spent)

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer to a request, or TransientError once retries are spent; RateLimited at
        once, without calling, while the forge's rate limit is spent."""
        delay = self.backoff
        for attempt in range(TRIES):
            self._held(method, path)
            try:
                response = await self.http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                metrics.forge_call(self.kind, None)
                error, wait = type(exc).__name__, delay
            else:
                metrics.forge_call(self.kind, response.status_code)
                now = time.time()
                until = resume_at(response, now)
                limited = _limited(response)
                if until is not None and (not limited or until - now > SHORT_WAIT):
                    self._hold(until)
                if limited:
                    self._held(method, path)  # a long wait is not made here: it fails fast
                    wait = max(delay, (until or now) - now)
                elif response.status_code < 500:
                    return response
                else:
                    wait = delay
                error = f"HTTP {response.status_code}"
            if attempt < TRIES - 1:
                await asyncio.sleep(wait * (1 + random.random()))
                delay *= 2
        raise TransientError(f"{self.kind} {method} {path} failed: {error}")

    def _hold(self, until: float) -> None:
        if until > self.resume_at:
            self.resume_at = until
            log.warning(
                "%s rate limit spent: no API call until %s",
                self.kind,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until)),
            )

    def _held(self, method: str, path: str) -> None:
        """Fail fast, without calling, while the rate limit is spent."""
        if time.time() < self.resume_at:
            metrics.FORGE_HELD.labels(self.kind).inc()
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.resume_at))
            raise RateLimited(
                f"{self.kind} {method} {path} not sent: the forge's rate limit is spent until"
                f" {when} (its reset); calls resume then",
                self.resume_at,
            )

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
