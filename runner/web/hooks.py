"""Webhook receivers: verify, store durably, answer — nothing else on the request path.

`POST /hooks/<forge name>` for GitHub, GitLab and Gitea, `POST /hooks/generic/<workflow>` for
anything that can sign a body. A delivery is checked for size, content type and signature
(several secrets may be valid at once, for rotation), then stored with its delivery id; the
answer is 202 for a new delivery and 200 for one already stored (it does nothing). Parsing,
matching and forge API calls happen later, from the stored events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from runner.forges.base import Verifier, verifier
from runner.store.base import Store

log = logging.getLogger(__name__)
MAX_BODY = 5 * 1024 * 1024
_KEEP = (
    "x-github-",
    "x-gitea-",
    "x-gogs-",
    "x-gitlab-event",
    "x-gitlab-instance",
    "x-runner-delivery",
)


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


@dataclass(frozen=True, kw_only=True)
class Receiver:
    name: str
    verifier: Verifier
    secrets: Sequence[str]


class TooLarge(Exception):
    pass


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _stored_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers worth keeping with the event; never a token (GitLab sends its secret as one)."""
    return {
        k: v
        for k, v in headers.items()
        if k in ("content-type", "user-agent") or k.startswith(_KEEP)
    }


class Hooks:
    def __init__(
        self,
        store: Store,
        receivers: Mapping[str, Receiver],
        *,
        generic_secrets: Sequence[str] = (),
        max_body: int = MAX_BODY,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.receivers = dict(receivers)
        self.generic = Receiver(
            name="generic", verifier=verifier("generic"), secrets=generic_secrets
        )
        self.max_body = max_body
        self.on_stored = on_stored

    def routes(self) -> list[Route]:
        return [
            Route("/hooks/generic/{workflow}", self.generic_hook, methods=["POST"]),
            Route("/hooks/{forge}", self.forge_hook, methods=["POST"]),
        ]

    async def forge_hook(self, request: Request) -> JSONResponse:
        name = request.path_params["forge"]
        receiver = self.receivers.get(name)
        if receiver is None:
            known = ", ".join(sorted(self.receivers)) or "none configured"
            return error(404, "unknown_forge", f"no forge named {name!r} (forges: {known})")
        return await self._receive(request, receiver, name)

    async def generic_hook(self, request: Request) -> JSONResponse:
        if not self.generic.secrets:
            return error(
                404, "generic_disabled", "generic webhooks need generic_webhook_secret_env"
            )
        return await self._receive(request, self.generic, request.path_params["workflow"])

    async def _receive(self, request: Request, receiver: Receiver, name: str) -> JSONResponse:
        try:
            body = await _body(request, self.max_body)
        except TooLarge:
            log.warning("webhook %s: body over %d bytes refused", receiver.name, self.max_body)
            return error(413, "too_large", f"the body is over {self.max_body} bytes")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return error(
                415,
                "unsupported_content_type",
                f"content type {content_type or 'none'!r}:"
                " configure the webhook to send application/json",
            )
        headers = {k.lower(): v for k, v in request.headers.items()}
        if not receiver.verifier.verify(headers, body, receiver.secrets):
            log.warning(
                "webhook %s: missing or wrong signature from %s", receiver.name, request.client
            )
            return error(
                401, "bad_signature", "the signature (or token) does not match a configured secret"
            )
        delivery = receiver.verifier.delivery(
            name if receiver.verifier.kind == "generic" else receiver.name, headers, body
        )
        if delivery.event_type == "ping":
            return JSONResponse({"status": "pong"})
        event, new = await self.store.add_event(
            forge=delivery.forge,
            delivery_id=delivery.delivery_id,
            event_type=delivery.event_type,
            headers=_stored_headers(headers),
            body=body,
        )
        if not new:
            return JSONResponse({"status": "duplicate", "event": event.id}, status_code=200)
        if self.on_stored is not None:
            self.on_stored()
        return JSONResponse({"status": "accepted", "event": event.id}, status_code=202)
