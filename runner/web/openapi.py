"""`/openapi.json`: the OpenAPI 3.1 description of every endpoint, request and response. Kept
next to `api.py` and `views.py`; the tests validate it and drive every operation from it."""

from __future__ import annotations

from typing import Any

from runner.model import RUN_TRANSITIONS

STR = {"type": "string"}
NSTR = {"type": ["string", "null"]}
TIME = {"type": ["string", "null"], "format": "date-time"}
OBJ: dict[str, Any] = {"type": "object"}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _closed(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required or list(props)}


SCHEMAS: dict[str, Any] = {
    "Error": _closed(
        {"error": _closed({"code": STR, "message": STR})},
    ),
    "Run": _closed(
        {
            "id": {"type": "integer"},
            "workflow": STR,
            "source": STR,
            "revision": STR,
            "status": {"enum": sorted(RUN_TRANSITIONS)},
            "trigger": OBJ,
            "inputs": OBJ,
            "error": NSTR,
            "wait": {
                "description": "What the unfinished run waits for (times in epoch seconds)"
                ", or null when it does not wait.",
                "oneOf": [{"type": "null"}, ref("Wait")],
            },
            "created_at": TIME,
            "started_at": TIME,
            "finished_at": TIME,
        }
    ),
    "Wait": _closed(
        {
            "for": {"enum": ["fetch", "executor", "concurrency", "approval"]},
            "reason": STR,
            "since": {"type": "number", "description": "epoch seconds"},
            "next_attempt": {
                "type": ["number", "null"],
                "description": "epoch seconds of the next try; null when none is scheduled",
            },
        }
    ),
    "Step": _closed(
        {
            "id": STR,
            "status": STR,
            "attempt": {"type": "integer"},
            "started_at": TIME,
            "finished_at": TIME,
            "outputs": {"type": ["object", "null"]},
            "error": NSTR,
            "log_size": {"type": "integer"},
            "log_truncated": {"type": "boolean"},
        }
    ),
    "Decision": _closed(
        {
            "actor": STR,
            "decision": {"enum": ["approve", "reject"]},
            "via": {"enum": ["cli", "api", "comment", "timeout", "cancel"]},
            "forge": {
                "type": ["string", "null"],
                "description": "The configured forge a comment came through (via comment).",
            },
            "comment_id": {
                "type": ["string", "null"],
                "description": "The forge's id of the comment; it decides a gate once.",
            },
            "comment": STR,
            "url": NSTR,
            "sha": {"type": ["string", "null"], "description": "The commit approved."},
            "revision": {"type": "string", "description": "The workflows revision."},
            "inputs_digest": {"type": "string", "description": "Digest of the step's inputs."},
            "at": TIME,
        }
    ),
    "Approval": _closed(
        {
            "id": {"type": "integer"},
            "run_id": {"type": "integer"},
            "step": STR,
            "status": {"enum": ["pending", "approved", "rejected", "expired"]},
            "required": {"type": "integer"},
            "approvers": {"type": "array", "items": STR},
            "allow_author": {"type": "boolean"},
            "sha": NSTR,
            "revision": STR,
            "requested_at": TIME,
            "deadline": TIME,
            "decided_at": TIME,
            "decisions": {"type": "array", "items": ref("Decision")},
        }
    ),
    "RunDetail": {
        "allOf": [
            ref("Run"),
            _closed(
                {
                    "steps": {"type": "array", "items": ref("Step")},
                    "approvals": {"type": "array", "items": ref("Approval")},
                }
            ),
        ]
    },
    "Workflow": _closed(
        {
            "name": STR,
            "source": STR,
            "revision": STR,
            "file": STR,
            "description": STR,
            "triggers": {"type": "array", "items": STR},
            "steps": {
                "type": "array",
                "items": _closed(
                    {
                        "id": STR,
                        "agent": STR,
                        "needs": {"type": "array", "items": STR},
                        "approval": {"type": "boolean"},
                    }
                ),
            },
            "inputs": {"type": ["object", "null"]},
            "status": STR,
        }
    ),
    "WorkflowDetail": {
        "allOf": [
            ref("Workflow"),
            _closed({"last_run": {"oneOf": [ref("Run"), {"type": "null"}]}}),
        ]
    },
    "Source": _closed(
        {
            "name": STR,
            "applied_revision": NSTR,
            "applied_at": TIME,
            "attempted_revision": NSTR,
            "attempted_at": TIME,
            "conditions": {
                "type": "array",
                "items": _closed(
                    {
                        "type": {"enum": ["Ready", "Reconciling", "Stalled"]},
                        "status": {"type": "boolean"},
                        "reason": STR,
                        "message": STR,
                        "changed_at": TIME,
                    }
                ),
            },
            "errors": {"type": "array", "items": OBJ},
            "last_fetch_at": TIME,
            "last_fetch_duration": {"type": ["number", "null"]},
        }
    ),
}


def _page(item: str) -> dict[str, Any]:
    return _closed(
        {"items": {"type": "array", "items": ref(item)}, "next_cursor": NSTR},
    )


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        400: "bad request",
        401: "no or bad token",
        403: "role too low, or not allowed by the approval policy",
        404: "not found",
        409: "conflict with the current state",
        413: "body too large",
        415: "not JSON",
        422: "invalid inputs",
        429: "rate limited",
        503: "the database (or, for a decision, the forge) did not answer: retry after the "
        "Retry-After header's seconds",
    }
    return {str(c): _json(ref("Error"), words[c]) for c in (401, 429, 503, *codes)}


def _param(name: str, where: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
    }


RUN_ID = _param("id", "path", {"type": "integer", "minimum": 1}, "run id")
PAGE = [
    _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 500}, "page size"),
    _param("cursor", "query", {"type": "string", "pattern": "^[1-9][0-9]*$"}, "next_cursor"),
]
JSON_BODY_ERRORS = (400, 413, 415)


def _op(
    summary: str,
    role: str,
    responses: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "description": f"Needs the `{role}` role.",
        "security": [{"bearer": []}],
        "parameters": params or [],
        "responses": responses,
    }
    if body is not None:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
    return op


def description() -> dict[str, Any]:
    name = _param("name", "path", STR, "workflow name")
    source = _param("source", "query", STR, "the source, when several hold the workflow")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "runner",
            "version": "1",
            "description": "GitOps pipeline runner: workflows, runs, approvals and sources.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/api/workflows": {
                "get": _op(
                    "Applied workflows",
                    "viewer",
                    {"200": _json(_page("Workflow"), "the workflows"), **_errors(400)},
                    params=PAGE,
                )
            },
            "/api/workflows/{name}": {
                "get": _op(
                    "One applied workflow and its last run",
                    "viewer",
                    {"200": _json(ref("WorkflowDetail"), "the workflow"), **_errors(404, 409)},
                    params=[name, source],
                )
            },
            "/api/workflows/{name}/runs": {
                "post": _op(
                    "Start a run (manual trigger); Idempotency-Key makes a retry safe",
                    "operator",
                    {
                        "201": _json(ref("Run"), "the new run"),
                        "200": _json(ref("Run"), "the run of this Idempotency-Key"),
                        **_errors(403, 404, 409, 422, *JSON_BODY_ERRORS),
                    },
                    params=[
                        name,
                        source,
                        _param("Idempotency-Key", "header", STR, "one run per key"),
                    ],
                    body={
                        "type": "object",
                        "properties": {"inputs": OBJ},
                        "additionalProperties": False,
                    },
                )
            },
            "/api/runs": {
                "get": _op(
                    "Runs, newest first",
                    "viewer",
                    {"200": _json(_page("Run"), "a page of runs"), **_errors(400)},
                    params=[
                        *PAGE,
                        _param("workflow", "query", STR, "only this workflow"),
                        _param("status", "query", STR, "comma-separated statuses"),
                        _param("since", "query", STR, "created at or after (RFC 3339)"),
                    ],
                )
            },
            "/api/runs/{id}": {
                "get": _op(
                    "A run with its steps and approvals",
                    "viewer",
                    {"200": _json(ref("RunDetail"), "the run"), **_errors(400, 404)},
                    params=[RUN_ID],
                )
            },
            "/api/runs/{id}/steps/{step}/log": {
                "get": _op(
                    "A step's log from a byte offset (X-Log-Next-Offset to follow)",
                    "viewer",
                    {
                        "200": {
                            "description": "the log bytes",
                            "content": {"text/plain": {"schema": STR}},
                        },
                        **_errors(400, 404),
                    },
                    params=[
                        RUN_ID,
                        _param("step", "path", STR, "step id"),
                        _param("offset", "query", {"type": "integer", "minimum": 0}, "from"),
                    ],
                )
            },
            "/api/runs/{id}/cancel": {
                "post": _op(
                    "Cancel an unfinished run",
                    "operator",
                    {"200": _json(ref("Run"), "the run"), **_errors(400, 403, 404, 409)},
                    params=[RUN_ID],
                )
            },
            "/api/runs/{id}/retry": {
                "post": _op(
                    "Queue a failed run again (its succeeded steps are kept)",
                    "operator",
                    {"200": _json(ref("Run"), "the run"), **_errors(400, 403, 404, 409)},
                    params=[RUN_ID],
                )
            },
            "/api/approvals": {
                "get": _op(
                    "Approval gates, newest first",
                    "viewer",
                    {"200": _json(_page("Approval"), "a page of approvals"), **_errors(400)},
                    params=[
                        *PAGE,
                        _param(
                            "status",
                            "query",
                            {"enum": ["pending", "approved", "rejected", "expired"]},
                            "only this status",
                        ),
                        _param("run", "query", {"type": "integer", "minimum": 1}, "only this run"),
                    ],
                )
            },
            "/api/approvals/{id}/decision": {
                "post": _op(
                    "Approve or reject as the token's name, under the step's policy",
                    "approver",
                    {
                        "200": _json(
                            _closed(
                                {
                                    "outcome": {"enum": ["approved", "rejected", "pending"]},
                                    "message": STR,
                                    "approval": ref("Approval"),
                                }
                            ),
                            "the decision was recorded",
                        ),
                        **_errors(403, 404, 409, *JSON_BODY_ERRORS),
                    },
                    params=[_param("id", "path", {"type": "integer", "minimum": 1}, "approval")],
                    body={
                        "type": "object",
                        "properties": {
                            "decision": {"enum": ["approve", "reject"]},
                            "comment": STR,
                        },
                        "required": ["decision"],
                    },
                )
            },
            "/api/sources": {
                "get": _op(
                    "Sources: applied and attempted revision, conditions, errors",
                    "viewer",
                    {
                        "200": _json(
                            _closed({"items": {"type": "array", "items": ref("Source")}}),
                            "the sources",
                        ),
                        **_errors(),
                    },
                )
            },
            "/api/sources/{name}/reconcile": {
                "post": _op(
                    "Reconcile a source now",
                    "operator",
                    {
                        "202": _json(_closed({"source": STR, "status": STR}), "requested"),
                        **_errors(403, 404),
                    },
                    params=[_param("name", "path", STR, "source name")],
                )
            },
        },
    }
