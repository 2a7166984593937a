"""Webhook receivers: verify, store durably, answer — nothing else on the request path.

`POST /hooks/<forge name>` for GitHub, GitLab and Gitea, `POST /hooks/generic/<workflow>` for
anything that can sign a body. A delivery is checked for size, content type and signature
(several secrets may be valid at once, for rotation), then its body is checked: a JSON object,
nested at most 64 levels, and for the forge events the runner acts on, with the fields it reads
(`runner/forges/payloads.py`); a body that fails is answered 400 with the reason and not stored.
Then it is stored with its delivery id; the answer is 202 for a new delivery and 200 for one
already stored (it does nothing). Matching and forge API calls happen later, from the stored
events.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runner import metrics, tracing
from runner.forges.base import Delivery, Verifier, verifier
from runner.forges.payloads import BadPayload, check_event, load_object
from runner.model import RunRequest, Workflow
from runner.revisions import BundleLoader
from runner.spec.inputs import InputsInvalid, resolve_inputs
from runner.spec.repo import builtin_agents
from runner.store.base import Store
from runner.store.batch import EventWriter, Stored

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


_RESULTS = {
    202: "accepted",
    200: "duplicate",
    400: "bad_request",
    401: "bad_signature",
    404: "unknown",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
}


# 400s whose error code is the metric's result: what was wrong with a signed body
_BAD_BODIES = frozenset({"bad_json", "too_deep", "invalid_payload"})
_UNVERIFIED = frozenset({"bad_signature", "too_large", "unsupported_media_type"})
# event names kept as metric labels; any other is counted as "other"
_EVENTS = frozenset(
    {
        "generic",
        "ping",
        "push",
        "pull_request",
        "issue_comment",
        "create",
        "delete",
        "release",
        "Push Hook",
        "Tag Push Hook",
        "Merge Request Hook",
        "Note Hook",
        "System Hook",
        "unknown",
    }
)


def _accepted(event_id: int) -> Response:  # the hot path's answer, without a JSON encoder
    return Response(
        b'{"status":"accepted","event":%d}' % event_id,
        status_code=202,
        media_type="application/json",
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


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


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
        writer: EventWriter | None = None,
    ) -> None:
        self.store = store
        self.writer = writer  # group commit of deliveries; without it, one transaction each
        self.loader = BundleLoader(store.revision_documents, builtin_agents())
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

    async def forge_hook(self, request: Request) -> Response:
        name = request.path_params["forge"]
        receiver = self.receivers.get(name)
        if receiver is None:
            known = ", ".join(sorted(self.receivers)) or "none configured"
            metrics.delivery("unknown", "unknown", "unknown_forge")  # never a caller's name
            return error(404, "unknown_forge", f"no forge named {name!r} (forges: {known})")
        return await self._counted(request, receiver, name)

    async def generic_hook(self, request: Request) -> Response:
        if not self.generic.secrets:
            return error(
                404, "generic_disabled", "generic webhooks need generic_webhook_secret_env"
            )
        return await self._counted(request, self.generic, request.path_params["workflow"])

    async def _counted(self, request: Request, receiver: Receiver, name: str) -> Response:
        response = await self._receive(request, receiver, name)
        result = _RESULTS.get(response.status_code, "error")
        if response.status_code == 200 and b'"pong"' in response.body:
            result = "ping"
        elif response.status_code == 400:
            code = json.loads(bytes(response.body))["error"]["code"]
            result = code if code in _BAD_BODIES else result
        headers = request.headers
        event = (
            "generic"
            if receiver.verifier.kind == "generic"
            else headers.get("x-github-event")
            or headers.get("x-gitlab-event")
            or headers.get("x-gitea-event")
            or "unknown"
        )
        if result in _UNVERIFIED:  # a header nobody vouched for is no metric label
            event = "unverified"
        elif event not in _EVENTS:  # the signature covers the body, not this header
            event = "other"
        metrics.delivery(receiver.name, event, result)
        return response

    async def _generic_run(
        self,
        workflow: str,
        event_id: int,
        delivery_id: str,
        given: dict[str, object],
        *,
        duplicate: bool,
    ) -> Response:
        """The body is the run's inputs: checked against the workflow's schema (422), then the
        run is requested, once per delivery."""
        found = await self._webhook_workflow(workflow)
        if found is None:
            return error(
                404, "unknown_workflow", f"no applied workflow {workflow!r} has a webhook trigger"
            )
        source, revision, spec = found
        try:
            inputs = resolve_inputs(spec.inputs, given)
        except InputsInvalid as exc:
            return error(422, "invalid_inputs", str(exc))
        run, _ = await self.store.request_run(
            RunRequest(
                workflow=workflow,
                source=source,
                revision=revision,
                idempotency_key=f"generic:{workflow}:{delivery_id}",
                trigger={"event": "webhook", "actor": "webhook", "delivery": delivery_id},
                inputs=inputs,
            )
        )
        if duplicate:
            return JSONResponse({"status": "duplicate", "event": event_id, "run": run.id})
        if self.on_stored is not None:
            self.on_stored()
        return JSONResponse(
            {"status": "accepted", "event": event_id, "run": run.id}, status_code=202
        )

    async def _webhook_workflow(self, name: str) -> tuple[str, str, Workflow] | None:
        for status in await self.store.list_source_statuses():
            if not status.applied_revision:
                continue
            bundle = await self.loader.bundle(status.name, status.applied_revision)
            spec = bundle.workflows.get(name)
            if spec is not None and any(t.kind == "webhook" for t in spec.triggers):
                return status.name, status.applied_revision, spec
        return None

    async def _add(
        self,
        *,
        forge: str,
        delivery_id: str,
        event_type: str,
        headers: Mapping[str, str],
        body: bytes,
        body_digest: str | None = None,
    ) -> Stored:
        event, new = await self.store.add_event(
            forge=forge,
            delivery_id=delivery_id,
            event_type=event_type,
            headers=headers,
            body=body,
            body_digest=body_digest,
        )
        return Stored(event.id, new)

    async def _receive(self, request: Request, receiver: Receiver, name: str) -> Response:
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
        kind = receiver.verifier.kind
        delivery = receiver.verifier.delivery(
            name if kind == "generic" else receiver.name, headers, body
        )
        try:  # an empty body is no inputs, on the generic hook
            payload = load_object(body if body or kind != "generic" else b"{}")
            check_event(kind, delivery.event_type, payload)
        except BadPayload as exc:
            log.warning(
                "webhook %s: %s delivery %s refused, not stored: %s",
                receiver.name,
                delivery.event_type,
                delivery.delivery_id,
                exc.message,
            )
            return error(
                400,
                exc.code,
                f"{exc.message}. The delivery was not stored: send a JSON object"
                + (" of run inputs" if kind == "generic" else " as the forge documents it"),
            )
        if delivery.event_type == "ping":
            return JSONResponse({"status": "pong"})
        with tracing.span(
            "webhook delivery",
            forge=delivery.forge,
            event=delivery.event_type,
            delivery=delivery.delivery_id,
        ):
            return await self._store(receiver, name, delivery, headers, body, payload)

    async def _store(
        self,
        receiver: Receiver,
        name: str,
        delivery: Delivery,
        headers: Mapping[str, str],
        body: bytes,
        payload: dict[str, object],
    ) -> Response:
        kept = _stored_headers(headers)
        parent = tracing.traceparent()
        if parent:  # the dispatcher and the runs continue this trace
            kept["traceparent"] = parent
        add = self.writer.add if self.writer is not None else self._add
        stored = await add(
            forge=delivery.forge,
            delivery_id=delivery.delivery_id,
            event_type=delivery.event_type,
            headers=kept,
            body=body,
            # the delivery id header is not signed: the same signed body under another id is
            # the same delivery (a replay). The generic hook's callers may repeat a body.
            body_digest=None if receiver.verifier.kind == "generic" else _digest(body),
        )
        if receiver.verifier.kind == "generic":  # a redelivery finds the same run
            return await self._generic_run(
                name, stored.id, delivery.delivery_id, payload, duplicate=not stored.new
            )
        if not stored.new:
            return JSONResponse({"status": "duplicate", "event": stored.id}, status_code=200)
        if self.on_stored is not None:
            self.on_stored()
        return _accepted(stored.id)
