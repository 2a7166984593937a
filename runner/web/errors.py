"""JSON errors for the HTTP service: `{"error": {"code", "message"}}` with the right status, for
errors the handlers raise and for the ones Starlette raises itself (404, 405), and 503 with
`Retry-After` when the database does not answer within a request's budget."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from runner.store.budget import StoreUnavailable

log = logging.getLogger(__name__)
RETRY_AFTER = 5  # seconds a client is asked to wait when the database is away

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    500: "internal",
    503: "not_ready",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    status: int, message: str, *, code: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code or CODES.get(status, "error"), "message": message}},
        status_code=status,
        headers=dict(headers or {}),
    )


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, code=exc.code, headers=exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {
        404: f"no such path: {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, message, headers=exc.headers)


async def store_unavailable(request: Request, exc: Exception) -> Response:
    """The database did not answer within the request's budget (`runner.store.budget`): 503
    at once, so that a forge redelivers and a client retries, instead of a hung request."""
    log.warning("%s %s: 503, %s", request.method, request.url.path, exc)
    return error_response(
        503,
        f"the database is unreachable or busy; nothing was changed that a retry would not "
        f"repeat safely: try again in {RETRY_AFTER}s",
        code="store_unavailable",
        headers={"Retry-After": str(RETRY_AFTER)},
    )


HANDLERS = {ApiError: api_error, HTTPException: http_error, StoreUnavailable: store_unavailable}
