"""The REST API (SPEC §4): what the CLI does, over HTTP, for a bearer token of the right role.

viewer reads; operator also starts, cancels and retries runs and asks for a reconcile;
approver also decides approvals (through the same policy function as PR comments, as the
token's configured name); admin is everything. Errors are `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import datetime
from typing import Any, Literal, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runner.approvals import Channel, Identity, NotAllowed, decide
from runner.dag import control
from runner.errors import PermanentError, TransientError
from runner.forges.api import ForgeClient, run_authors
from runner.forges.payloads import BadPayload, load_object
from runner.model import RUN_TRANSITIONS, Bundle, RunRequest, RunStatus, Workflow
from runner.reporting import Reporter
from runner.revisions import BundleLoader
from runner.spec.inputs import InputsInvalid, resolve_inputs
from runner.store.base import Store
from runner.web.auth import Principal, Role, Tokens
from runner.web.errors import ApiError
from runner.web.views import approval_view, run_view, source_view, step_view, workflow_view

log = logging.getLogger(__name__)
Handler = Callable[[Request], Awaitable[Response]]
STATUSES: frozenset[str] = frozenset(RUN_TRANSITIONS)
MAX_BODY = 1 << 20
MAX_LIMIT = 500


def _int(value: str | None, what: str, *, default: int | None = None, low: int = 0) -> int:
    if value is None or value == "":
        if default is None:
            raise ApiError(400, f"{what} is required")
        return default
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, f"{what} must be an integer, not {value!r}") from None
    if number < low:
        raise ApiError(400, f"{what} must be at least {low}")
    if number >= 1 << 63:
        raise ApiError(400, f"{what} is too large")
    return number


def _page(request: Request) -> tuple[int, int | None]:
    """(limit, cursor): `limit` 1..500 (default 50); `cursor` is the `next_cursor` of the last
    page."""
    limit = min(_int(request.query_params.get("limit"), "limit", default=50, low=1), MAX_LIMIT)
    cursor = request.query_params.get("cursor")
    return limit, (_int(cursor, "cursor", low=1) if cursor else None)


def _since(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ApiError(
            400, f"since must be an RFC 3339 time or Unix seconds, not {value!r}"
        ) from None


async def _json_body(request: Request) -> dict[str, Any]:
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if kind != "application/json":
        raise ApiError(415, f"send application/json, not {kind}")
    size = request.headers.get("content-length")
    if size and size.isdigit() and int(size) > MAX_BODY:
        raise ApiError(413, f"the body is over {MAX_BODY} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"the body is over {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:  # not JSON, not an object, nested too deep: 400, never a RecursionError's 500
        return load_object(raw)
    except BadPayload as exc:
        raise ApiError(400, exc.message) from None


class Api:
    def __init__(
        self,
        store: Store,
        loader: BundleLoader,
        tokens: Tokens,
        *,
        source_names: Collection[str] = (),
        on_requested: Callable[[], None] = lambda: None,
        clients: Mapping[str, ForgeClient] | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.reporter = reporter  # a cancel reports the run's final state to its forge
        self.clients = dict(clients or {})  # forge APIs: who authored a change, for approvals
        self.source_names = frozenset(source_names)
        self.store = store
        self.loader = loader
        self.tokens = tokens
        self.on_requested = on_requested  # a run was requested or handed back: wake workers

    # -- plumbing -------------------------------------------------------------------------------
    def _guard(
        self, role: Role, handler: Callable[[Request, Principal], Awaitable[Response]]
    ) -> Handler:
        async def guarded(request: Request) -> Response:
            principal = self.tokens.authenticate(request.headers.get("authorization"))
            if principal is None:
                raise ApiError(
                    401,
                    "send Authorization: Bearer <token> with a token from the api.tokens settings",
                    headers={"WWW-Authenticate": 'Bearer realm="runner"'},
                )
            if not principal.allows(role):
                raise ApiError(
                    403, f"this needs the {role} role; token {principal.name!r} is {principal.role}"
                )
            return await handler(request, principal)

        return guarded

    def routes(self) -> list[Route]:
        g = self._guard
        return [
            Route("/api/workflows", g("viewer", self.workflows)),
            Route("/api/workflows/{name}", g("viewer", self.workflow)),
            Route("/api/workflows/{name}/runs", g("operator", self.start), methods=["POST"]),
            Route("/api/runs", g("viewer", self.runs)),
            Route("/api/runs/{id}", g("viewer", self.run)),
            Route("/api/runs/{id}/steps/{step}/log", g("viewer", self.log)),
            Route("/api/runs/{id}/cancel", g("operator", self.cancel), methods=["POST"]),
            Route("/api/runs/{id}/retry", g("operator", self.retry), methods=["POST"]),
            Route("/api/approvals", g("viewer", self.approvals)),
            Route("/api/approvals/{id}/decision", g("approver", self.decision), methods=["POST"]),
            Route("/api/sources", g("viewer", self.sources)),
            Route("/api/sources/{name}/reconcile", g("operator", self.reconcile), methods=["POST"]),
        ]

    async def _applied(self) -> list[tuple[str, str, Bundle]]:
        found = []
        for status in await self.store.list_source_statuses():
            if status.applied_revision:
                bundle = await self.loader.bundle(status.name, status.applied_revision)
                found.append((status.name, status.applied_revision, bundle))
        return found

    async def _find_workflow(self, request: Request) -> tuple[str, str, Workflow]:
        name = request.path_params["name"]
        wanted = request.query_params.get("source")
        found = [
            (source, revision, bundle.workflows[name])
            for source, revision, bundle in await self._applied()
            if name in bundle.workflows and wanted in (None, source)
        ]
        if not found:
            raise ApiError(
                404, f"no applied workflow {name!r}" + (f" in source {wanted!r}" if wanted else "")
            )
        if len(found) > 1:
            sources = ", ".join(f[0] for f in found)
            raise ApiError(
                409, f"workflow {name!r} is in several sources ({sources}): add ?source="
            )
        return found[0]

    async def _run_id(self, request: Request) -> int:
        run_id = _int(request.path_params["id"], "run id", low=1)
        if await self.store.get_run(run_id) is None:
            raise ApiError(404, f"there is no run {run_id}")
        return run_id

    # -- workflows ------------------------------------------------------------------------------
    async def workflows(self, request: Request, who: Principal) -> Response:
        limit, cursor = _page(request)  # the cursor counts the workflows already listed
        items = [
            workflow_view(workflow, source, revision)
            for source, revision, bundle in await self._applied()
            for workflow in sorted(bundle.workflows.values(), key=lambda w: w.name)
        ]
        start = cursor or 0
        more = len(items) > start + limit
        return JSONResponse(
            {
                "items": items[start : start + limit],
                "next_cursor": str(start + limit) if more else None,
            }
        )

    async def workflow(self, request: Request, who: Principal) -> Response:
        source, revision, workflow = await self._find_workflow(request)
        view = workflow_view(workflow, source, revision)
        recent = await self.store.list_runs(workflow=workflow.name, limit=1)
        view["last_run"] = run_view(recent[0]) if recent else None
        return JSONResponse(view)

    async def start(self, request: Request, who: Principal) -> Response:
        body = await _json_body(request)
        unknown = set(body) - {"inputs"}
        if unknown:
            raise ApiError(
                400, f'unknown field(s) {sorted(unknown)}: the body is {{"inputs": {{...}}}}'
            )
        raw_inputs = body.get("inputs", {})
        if not isinstance(raw_inputs, dict):
            raise ApiError(400, "inputs must be a JSON object")
        source, revision, workflow = await self._find_workflow(request)
        if not any(t.kind == "manual" for t in workflow.triggers):
            raise ApiError(
                409,
                f"workflow {workflow.name!r} has no manual trigger: add `manual: {{}}` to its "
                "triggers to start it through the API",
            )
        try:
            inputs = resolve_inputs(workflow.inputs, raw_inputs)
        except InputsInvalid as exc:
            raise ApiError(422, str(exc)) from None
        key = request.headers.get("idempotency-key")
        run, created = await self.store.request_run(
            RunRequest(
                workflow=workflow.name,
                source=source,
                revision=revision,
                idempotency_key=(
                    f"api:{who.name}:{workflow.name}:{key}" if key else f"api:{uuid.uuid4()}"
                ),
                trigger={"event": "manual", "actor": who.name, "via": "api"},
                inputs=inputs,
                concurrency_group=None,  # the engine renders the workflow's group
            )
        )
        if created:
            log.info(
                "run %d of %s requested by %s through the API", run.id, workflow.name, who.name
            )
            self.on_requested()
        return JSONResponse(run_view(run), status_code=201 if created else 200)

    # -- runs -----------------------------------------------------------------------------------
    async def runs(self, request: Request, who: Principal) -> Response:
        limit, cursor = _page(request)
        statuses = [
            s for part in request.query_params.getlist("status") for s in part.split(",") if s
        ]
        bad = [s for s in statuses if s not in STATUSES]
        if bad:
            raise ApiError(400, f"unknown status {bad[0]!r}; one of {', '.join(sorted(STATUSES))}")
        found = await self.store.list_runs(
            workflow=request.query_params.get("workflow") or None,
            status=cast(list[RunStatus], statuses) or None,
            since=_since(request.query_params.get("since")),
            before_id=cursor,
            limit=limit + 1,
        )
        page = found[:limit]
        more = len(found) > limit
        return JSONResponse(
            {
                "items": [run_view(r) for r in page],
                "next_cursor": str(page[-1].id) if more and page else None,
            }
        )

    async def run(self, request: Request, who: Principal) -> Response:
        run_id = _int(request.path_params["id"], "run id", low=1)
        run = await self.store.get_run(run_id)
        if run is None:
            raise ApiError(404, f"there is no run {run_id}")
        view = run_view(run)
        view["steps"] = [step_view(s) for s in await self.store.get_steps(run_id)]
        view["approvals"] = [
            approval_view(a, await self.store.decisions(a.id))
            for a in await self.store.list_approvals(run_id=run_id)
        ]
        return JSONResponse(view)

    async def log(self, request: Request, who: Principal) -> Response:
        run_id = await self._run_id(request)
        step = request.path_params["step"]
        if step not in {s.step_id for s in await self.store.get_steps(run_id)}:
            raise ApiError(404, f"run {run_id} has no step {step!r} that has started")
        offset = _int(request.query_params.get("offset"), "offset", default=0)
        part = await self.store.read_log(run_id, step, offset=offset)
        return Response(
            part.data,
            media_type="text/plain; charset=utf-8",
            headers={
                "X-Log-Offset": str(part.offset),
                "X-Log-Next-Offset": str(part.next_offset),
                "X-Log-Truncated": "true" if part.truncated else "false",
            },
        )

    async def _control(
        self, request: Request, who: Principal, verb: Literal["cancel", "retry"]
    ) -> Response:
        run_id = await self._run_id(request)
        try:
            if verb == "cancel":
                run = await control.cancel(
                    self.store,
                    run_id,
                    reason=f"cancelled by {who.name} (API)",
                    reporter=self.reporter,
                )
            else:
                run = await control.retry(self.store, run_id)
        except PermanentError as exc:
            raise ApiError(409, str(exc)) from None
        log.info("run %d: %s by %s through the API", run_id, verb, who.name)
        self.on_requested()
        return JSONResponse(run_view(run))

    async def cancel(self, request: Request, who: Principal) -> Response:
        return await self._control(request, who, "cancel")

    async def retry(self, request: Request, who: Principal) -> Response:
        return await self._control(request, who, "retry")

    # -- approvals ------------------------------------------------------------------------------
    async def approvals(self, request: Request, who: Principal) -> Response:
        limit, cursor = _page(request)
        status = request.query_params.get("status") or None
        if status not in (None, "pending", "approved", "rejected", "expired"):
            raise ApiError(
                400, f"unknown status {status!r}; one of pending, approved, rejected, expired"
            )
        run = request.query_params.get("run")
        found = await self.store.list_approvals(
            status=status, run_id=_int(run, "run", low=1) if run else None
        )
        found = sorted((a for a in found if cursor is None or a.id < cursor), key=lambda a: -a.id)
        page = found[:limit]
        return JSONResponse(
            {
                "items": [approval_view(a, await self.store.decisions(a.id)) for a in page],
                "next_cursor": str(page[-1].id) if len(found) > limit else None,
            }
        )

    async def decision(self, request: Request, who: Principal) -> Response:
        approval_id = _int(request.path_params["id"], "approval id", low=1)
        body = await _json_body(request)
        verdict = body.get("decision")
        if verdict not in ("approve", "reject"):
            raise ApiError(400, 'decision must be "approve" or "reject"')
        comment = body.get("comment", "")
        if not isinstance(comment, str):
            raise ApiError(400, "comment must be a string")
        gate = await self.store.get_approval(approval_id)
        if gate is None:
            raise ApiError(404, f"there is no approval {approval_id}")
        run = await self.store.get_run(gate.run_id)  # a store away answers 503 (errors.py)
        try:  # who the forge says authored the change, as for a comment
            authors = await run_authors(run, gate.sha, self.clients)
        except TransientError as exc:
            raise ApiError(
                503,
                f"cannot tell who authored the change ({exc}); try again",
                headers={"Retry-After": "30"},
            ) from None
        try:
            outcome = await decide(
                self.store,
                approval_id,
                who=Identity(name=who.name, teams=who.teams, can_write=True),
                decision=verdict,
                channel=Channel(via="api"),
                comment=comment,
                authors=authors,
            )
        except NotAllowed as exc:
            current = await self.store.get_approval(approval_id)
            status = 409 if current is not None and current.status != "pending" else 403
            raise ApiError(status, str(exc)) from None
        self.on_requested()
        view = approval_view(outcome.approval, await self.store.decisions(approval_id))
        return JSONResponse(
            {"outcome": outcome.status, "message": outcome.message, "approval": view}
        )

    # -- sources --------------------------------------------------------------------------------
    async def sources(self, request: Request, who: Principal) -> Response:
        return JSONResponse(
            {"items": [source_view(s) for s in await self.store.list_source_statuses()]}
        )

    async def reconcile(self, request: Request, who: Principal) -> Response:
        name = request.path_params["name"]
        if name not in self.source_names and await self.store.get_source_status(name) is None:
            raise ApiError(404, f"there is no source {name!r}")
        await self.store.add_event(
            forge="runner",
            delivery_id=f"reconcile:{uuid.uuid4()}",
            event_type="reconcile",
            headers={},
            body=json.dumps({"source": name, "by": who.name}).encode(),
        )
        self.on_requested()
        log.info("reconcile of %s requested by %s through the API", name, who.name)
        return JSONResponse({"source": name, "status": "requested"}, status_code=202)
