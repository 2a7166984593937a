"""The REST API over real HTTP (`runner serve --role web` on a SQLite file the tests also
write): every endpoint, every role boundary, pagination and filters, errors as JSON, the
OpenAPI description (validated, and every operation exercised from it by schemathesis), and
metrics after real activity."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from runner.model import RunRequest, StepRun
from runner.store.base import open_store
from tests.conftest import apply_example, gated_run
from tests.web.service import serve

TOKENS = {
    "T_VIEWER": "viewer-t0ken-aaaaaaaa",
    "T_OPERATOR": "operator-t0ken-bbbbbbbb",
    "T_ALICE": "approver-t0ken-cccccccc",
    "T_MALLORY": "approver-t0ken-dddddddd",
    "T_ADMIN": "admin-t0ken-eeeeeeee",
}
CONFIG = """\
api:
  tokens:
    - {name: viewer-bot, role: viewer, token_env: T_VIEWER}
    - {name: ci, role: operator, token_env: T_OPERATOR}
    - {name: alice, role: approver, token_env: T_ALICE}
    - {name: mallory, role: approver, token_env: T_MALLORY}
    - {name: root, role: admin, token_env: T_ADMIN}
rate_limits: {reads: 100000/minute, writes: 100000/minute, triggers: 100000/minute}
"""


def db(home: Path, work: Any) -> Any:
    async def go() -> Any:
        store = open_store(f"sqlite:///{home}/runner.db")
        await store.open()
        try:
            await store.migrate()
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(go())


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("api")
    db(home, apply_example)
    return home


@pytest.fixture(scope="module")
def base(home: Path) -> Iterator[str]:
    with serve(home, CONFIG, TOKENS) as url:
        yield url


def call(
    base: str, method: str, path: str, token: str | None = "T_ADMIN", **kw: Any
) -> httpx.Response:
    headers = dict(kw.pop("headers", {}))
    if token:
        headers["Authorization"] = f"Bearer {TOKENS[token]}"
    return httpx.request(method, base + path, headers=headers, timeout=10, **kw)


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    return str(body["error"]["message"])


def waiting_gate(home: Path, approvers: tuple[str, ...]) -> tuple[int, int]:
    async def work(store: Any) -> tuple[int, int]:
        trigger = {"event": "pull_request", "actor": "dev", "sha": "c0ffee"}
        run, gate = await gated_run(
            store, key=f"gate-{approvers}", trigger=trigger, approvers=approvers
        )
        return run.id, gate.id

    result: tuple[int, int] = db(home, work)
    return result


OPERATIONS = [
    ("GET", "/api/workflows", "viewer"),
    ("GET", "/api/workflows/pr-security-review", "viewer"),
    ("POST", "/api/workflows/pr-security-review/runs", "operator"),
    ("GET", "/api/runs", "viewer"),
    ("GET", "/api/runs/1", "viewer"),
    ("GET", "/api/runs/1/steps/scan/log", "viewer"),
    ("POST", "/api/runs/1/cancel", "operator"),
    ("POST", "/api/runs/1/retry", "operator"),
    ("GET", "/api/approvals", "viewer"),
    ("POST", "/api/approvals/1/decision", "approver"),
    ("GET", "/api/sources", "viewer"),
    ("POST", "/api/sources/main/reconcile", "operator"),
]
ROLE_TOKENS = {"viewer": "T_VIEWER", "operator": "T_OPERATOR", "approver": "T_ALICE"}


def test_the_description_is_valid_openapi_and_lists_every_operation(base: str) -> None:
    spec = httpx.get(base + "/openapi.json").json()
    validate(spec)
    described = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    templates = {
        (m, p.replace("/1", "/{id}").replace("pr-security-review", "{name}"))
        for m, p, _ in OPERATIONS
    }
    templates = {
        (m, p.replace("/main/", "/{name}/").replace("/scan/", "/{step}/")) for m, p in templates
    }
    assert described == templates


@pytest.mark.parametrize(("method", "path", "role"), OPERATIONS)
def test_no_token_or_a_wrong_one_is_401(base: str, method: str, path: str, role: str) -> None:
    missing = call(base, method, path, token=None)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "Bearer" in error_of(missing)
    wrong = httpx.request(method, base + path, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    basic = httpx.request(method, base + path, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401


@pytest.mark.parametrize(("method", "path", "role"), OPERATIONS)
def test_a_role_below_the_operation_is_403(base: str, method: str, path: str, role: str) -> None:
    order = ["viewer", "operator", "approver"]
    for lower in order[: order.index(role)]:
        response = call(base, method, path, token=ROLE_TOKENS[lower], json={})
        assert response.status_code == 403, (lower, response.text)
        assert f"needs the {role} role" in error_of(response)


def test_workflows_and_starting_a_run(base: str) -> None:
    listed = call(base, "GET", "/api/workflows", token="T_VIEWER").json()["items"]
    assert {w["name"] for w in listed} == {
        "pr-security-review",
        "nightly-compliance",
        "deploy-check",
    }
    one = call(base, "GET", "/api/workflows/nightly-compliance", token="T_VIEWER").json()
    assert (one["source"], one["revision"], one["triggers"]) == (
        "main",
        "rev1",
        ["schedule", "manual"],
    )
    assert call(base, "GET", "/api/workflows/nope").status_code == 404

    started = call(
        base,
        "POST",
        "/api/workflows/nightly-compliance/runs",
        token="T_OPERATOR",
        json={"inputs": {}},
        headers={"Idempotency-Key": "k-1"},
    )
    assert started.status_code == 201, started.text
    run = started.json()
    assert (run["workflow"], run["status"], run["trigger"]["actor"]) == (
        "nightly-compliance",
        "queued",
        "ci",
    )
    again = call(
        base,
        "POST",
        "/api/workflows/nightly-compliance/runs",
        token="T_OPERATOR",
        json={},
        headers={"Idempotency-Key": "k-1"},
    )
    assert (again.status_code, again.json()["id"]) == (200, run["id"])

    no_manual = call(base, "POST", "/api/workflows/deploy-check/runs", json={})
    assert no_manual.status_code == 409
    assert "manual: {}" in error_of(no_manual)
    bad_inputs = call(
        base,
        "POST",
        "/api/workflows/pr-security-review/runs",
        json={"inputs": {"threshold": "extreme"}},
    )
    assert bad_inputs.status_code == 422
    not_json = call(
        base,
        "POST",
        "/api/workflows/nightly-compliance/runs",
        content=b"{",
        headers={"Content-Type": "application/json"},
    )
    assert not_json.status_code == 400
    form = call(
        base,
        "POST",
        "/api/workflows/nightly-compliance/runs",
        content=b"a=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415
    huge = call(
        base,
        "POST",
        "/api/workflows/nightly-compliance/runs",
        content=b" " * (1 << 20 + 1),
        headers={"Content-Type": "application/json"},
    )
    assert huge.status_code == 413


def test_runs_pages_and_filters(base: str, home: Path) -> None:
    async def work(store: Any) -> list[int]:
        ids = []
        for i in range(7):
            run, _ = await store.request_run(
                RunRequest(
                    workflow="pr-security-review",
                    source="main",
                    revision="rev1",
                    idempotency_key=f"page-{i}",
                )
            )
            ids.append(run.id)
        await store.transition_run(ids[0], "cancelled", error="test")
        return ids

    ids = db(home, work)
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, "workflow": "pr-security-review"}
        if cursor:
            params["cursor"] = cursor
        page = call(base, "GET", "/api/runs", token="T_VIEWER", params=params).json()
        seen += [r["id"] for r in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert set(ids) <= set(seen)
    assert len(seen) == len(set(seen))  # no run twice across pages
    assert seen == sorted(seen, reverse=True)
    assert pages >= 3
    cancelled = call(base, "GET", "/api/runs", params={"status": "cancelled"}).json()["items"]
    assert ids[0] in [r["id"] for r in cancelled]
    assert all(r["status"] == "cancelled" for r in cancelled)
    assert (
        call(base, "GET", "/api/runs", params={"since": "2999-01-01T00:00:00Z"}).json()["items"]
        == []
    )
    assert call(base, "GET", "/api/runs", params={"status": "exploded"}).status_code == 400
    assert call(base, "GET", "/api/runs", params={"limit": "x"}).status_code == 400
    assert call(base, "GET", "/api/runs", params={"cursor": "abc"}).status_code == 400


def test_run_detail_log_cancel_and_retry(base: str, home: Path) -> None:
    async def work(store: Any) -> int:
        run, _ = await store.request_run(
            RunRequest(
                workflow="pr-security-review",
                source="main",
                revision="rev1",
                idempotency_key="detail",
            )
        )
        await store.save_step(
            StepRun(run_id=run.id, step_id="scan", status="running", started_at=1.0)
        )
        await store.append_log(run.id, "scan", b"line one\nline two\n")
        return int(run.id)

    run_id = db(home, work)
    detail = call(base, "GET", f"/api/runs/{run_id}", token="T_VIEWER").json()
    assert [s["id"] for s in detail["steps"]] == ["scan"]
    log = call(base, "GET", f"/api/runs/{run_id}/steps/scan/log", token="T_VIEWER")
    assert log.text == "line one\nline two\n"
    tail = call(base, "GET", f"/api/runs/{run_id}/steps/scan/log", params={"offset": 9})
    assert tail.text == "line two\n"
    assert tail.headers["x-log-next-offset"] == "18"
    assert call(base, "GET", f"/api/runs/{run_id}/steps/nope/log").status_code == 404
    assert call(base, "GET", "/api/runs/999999").status_code == 404
    assert call(base, "GET", "/api/runs/abc").status_code == 400

    cancelled = call(base, "POST", f"/api/runs/{run_id}/cancel", token="T_OPERATOR")
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    twice = call(base, "POST", f"/api/runs/{run_id}/cancel", token="T_OPERATOR")
    assert twice.status_code == 409
    assert "only an unfinished run" in error_of(twice)
    retried = call(base, "POST", f"/api/runs/{run_id}/retry", token="T_OPERATOR")
    assert (retried.status_code, retried.json()["status"]) == (200, "queued")


def test_approval_decisions_follow_the_policy_and_record_the_token(base: str, home: Path) -> None:
    run_id, gate_id = waiting_gate(home, ("alice",))
    pending = call(
        base, "GET", "/api/approvals", token="T_VIEWER", params={"status": "pending"}
    ).json()
    assert gate_id in [a["id"] for a in pending["items"]]

    outsider = call(
        base,
        "POST",
        f"/api/approvals/{gate_id}/decision",
        token="T_MALLORY",
        json={"decision": "approve"},
    )
    assert outsider.status_code == 403
    assert "mallory" in error_of(outsider)
    bad = call(
        base,
        "POST",
        f"/api/approvals/{gate_id}/decision",
        token="T_ALICE",
        json={"decision": "maybe"},
    )
    assert bad.status_code == 400
    decided = call(
        base,
        "POST",
        f"/api/approvals/{gate_id}/decision",
        token="T_ALICE",
        json={"decision": "approve", "comment": "lgtm"},
    )
    assert decided.status_code == 200, decided.text
    body = decided.json()
    assert body["outcome"] == "approved"
    assert [(d["actor"], d["via"], d["comment"]) for d in body["approval"]["decisions"]] == [
        ("alice", "api", "lgtm")
    ]
    again = call(
        base,
        "POST",
        f"/api/approvals/{gate_id}/decision",
        token="T_ALICE",
        json={"decision": "approve"},
    )
    assert again.status_code == 409
    assert (
        call(
            base, "POST", "/api/approvals/999999/decision", json={"decision": "approve"}
        ).status_code
        == 404
    )
    shown = call(base, "GET", f"/api/runs/{run_id}").json()
    assert shown["approvals"][0]["status"] == "approved"


def test_sources_and_reconcile_requests(base: str, home: Path) -> None:
    async def seed(store: Any) -> None:
        from runner.model import SourceStatus

        await store.save_source_status(
            SourceStatus(name="main", applied_revision="rev1", applied_at=2.0)
        )

    db(home, seed)
    sources = call(base, "GET", "/api/sources", token="T_VIEWER").json()["items"]
    assert [(s["name"], s["applied_revision"]) for s in sources] == [("main", "rev1")]
    asked = call(base, "POST", "/api/sources/main/reconcile", token="T_OPERATOR")
    assert (asked.status_code, asked.json()["status"]) == (202, "requested")

    async def events(store: Any) -> list[Any]:
        return [e for e in await store.claim_events("t", 0.001, 100) if e.forge == "runner"]

    stored = db(home, events)
    assert json.loads(stored[-1].body) == {"source": "main", "by": "ci"}
    assert call(base, "POST", "/api/sources/nope/reconcile").status_code == 404


def test_unknown_paths_and_methods_are_json_errors(base: str) -> None:
    missing = httpx.get(base + "/api/nothing-here")
    assert missing.status_code == 404
    assert "no such path" in error_of(missing)
    wrong = httpx.delete(base + "/api/runs")
    assert wrong.status_code == 405
    error_of(wrong)


def test_metrics_after_real_activity(base: str, home: Path) -> None:
    httpx.post(
        base + "/hooks/nosuchforge", content=b"{}", headers={"Content-Type": "application/json"}
    )
    text = httpx.get(base + "/metrics").text
    assert (
        'runner_webhook_deliveries_total{event="unknown",forge="unknown",'
        'result="unknown_forge"} 1.0' in text
    )

    async def queued(store: Any) -> int:
        return int(await store.count_runs(status=["queued"]))

    assert f"runner_runs_queued {float(db(home, queued))}" in text
    assert 'runner_executor_up{executor="local"} 1.0' in text
    for name in (
        "runner_approvals_waiting",
        "runner_approvals_oldest_wait_seconds",
        "runner_source_applied_revision_info",
    ):
        assert name in text


def test_schemathesis_finds_no_server_error(base: str) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi.checks import (
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    failures: list[str] = []
    token = {"Authorization": f"Bearer {TOKENS['T_ADMIN']}"}

    for operation in schema.get_all_operations():
        op = operation.ok()

        @settings(
            max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        @given(case=op.as_strategy())
        def check(case: Any) -> None:
            response = case.call(base_url=base, headers=token)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path}: {response.status_code}"
                    f" {response.text[:200]}"
                )
            case.validate_response(
                response, checks=(response_schema_conformance, status_code_conformance)
            )

        check()
    assert failures == [], "\n".join(failures)
