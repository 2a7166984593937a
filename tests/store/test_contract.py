"""The Store contract, run against every backend (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from runner.model import (
    Approval,
    ApprovalPolicy,
    Condition,
    Decision,
    RunRequest,
    SourceStatus,
    StepRun,
    StoredDocument,
    run_wait,
)
from runner.store.base import Store
from tests.store.conftest import Clock

pytestmark = pytest.mark.anyio


def request(key: str, workflow: str = "wf", **kwargs: object) -> RunRequest:
    return RunRequest(
        workflow=workflow,
        source="main",
        revision="abc123",
        idempotency_key=key,
        trigger={"event": "manual", "actor": "alice"},
        inputs={"threshold": "high"},
        **kwargs,  # type: ignore[arg-type]
    )


def doc(name: str, digest: str, kind: str = "Workflow") -> StoredDocument:
    return StoredDocument(
        kind=kind,  # type: ignore[arg-type]
        name=name,
        digest=digest,
        content={"metadata": {"name": name}, "v": digest},
        path=f"workflows/{name}.yaml",
    )


# -- migrations ------------------------------------------------------------------------------


async def test_migrate_twice_is_a_no_op(store: Store) -> None:
    assert await store.migrate() == []
    assert await store.pending_migrations() == []


# -- idempotency -----------------------------------------------------------------------------


async def test_same_idempotency_key_returns_the_existing_run(store: Store) -> None:
    first, created = await store.request_run(request("k1"))
    again, created_again = await store.request_run(request("k1", workflow="other"))
    assert created
    assert not created_again
    assert again == first
    assert first.status == "queued"
    assert first.trigger == {"event": "manual", "actor": "alice"}
    assert first.inputs == {"threshold": "high"}
    assert len(await store.list_runs()) == 1


async def test_list_runs_filters_and_pages(store: Store, clock: Clock) -> None:
    ids = []
    for i in range(5):
        run, _ = await store.request_run(request(f"k{i}", workflow="a" if i % 2 else "b"))
        ids.append(run.id)
        clock.advance(10)
    assert [r.id for r in await store.list_runs()] == ids[::-1]
    assert [r.id for r in await store.list_runs(workflow="a")] == [ids[3], ids[1]]
    page = await store.list_runs(limit=2)
    assert [r.id for r in await store.list_runs(limit=2, before_id=page[-1].id)] == [
        ids[2],
        ids[1],
    ]
    assert [r.id for r in await store.list_runs(since=clock.now - 25)] == [ids[4], ids[3]]
    await store.transition_run(ids[0], "running")
    assert [r.id for r in await store.list_runs(status=["running"])] == [ids[0]]
    assert await store.count_runs(status=["queued"]) == 4


# -- transitions -----------------------------------------------------------------------------


async def test_transitions_follow_the_table_and_stamp_times(store: Store, clock: Clock) -> None:
    run, _ = await store.request_run(request("k"))
    assert await store.transition_run(run.id, "succeeded") is None  # queued -> succeeded: no
    clock.advance(5)
    running = await store.transition_run(run.id, "running")
    assert running is not None
    assert running.started_at == clock.now
    waiting = await store.transition_run(run.id, "waiting_approval")
    assert waiting is not None
    assert waiting.status == "waiting_approval"
    back = await store.transition_run(run.id, "running")
    assert back is not None
    assert back.started_at == running.started_at
    clock.advance(5)
    done = await store.transition_run(run.id, "failed", error="step scan failed")
    assert done is not None
    assert done.finished_at == clock.now
    assert done.error == "step scan failed"
    assert await store.transition_run(run.id, "running") is None
    retried = await store.transition_run(run.id, "queued")
    assert retried is not None
    assert retried.finished_at is None


async def test_finishing_a_run_drops_its_lease(store: Store) -> None:
    run, _ = await store.request_run(request("k"))
    (held,) = await store.acquire_runs("node-a", 60, 10)
    await store.transition_run(held.id, "running")
    done = await store.transition_run(run.id, "succeeded")
    assert done is not None
    assert done.lease_owner is None
    assert await store.acquire_runs("node-b", 60, 10) == []


async def test_a_runs_wait_is_kept_until_it_moves_on(store: Store, clock: Clock) -> None:
    run, _ = await store.request_run(request("k"))
    assert run.wait is None
    waiting = run_wait("concurrency", "run 1 of group 'g' is active", clock.now)
    held = await store.set_run_wait(run.id, waiting)
    assert held is not None
    assert held.status == "queued"
    assert held.wait == waiting
    assert (await store.get_run(run.id)) == held
    fetch = run_wait("fetch", "HTTP 500", clock.now, clock.now + 5)
    running = await store.transition_run(run.id, "running", wait=fetch)
    assert running is not None
    assert running.wait == {"for": "fetch", "reason": "HTTP 500", "since": clock.now,
                            "next_attempt": clock.now + 5}  # fmt: skip
    moved = await store.transition_run(run.id, "waiting_approval")
    assert moved is not None
    assert moved.wait is None  # a run that moves on waits for nothing unless told
    done = await store.transition_run(run.id, "cancelled")
    assert done is not None
    assert await store.set_run_wait(run.id, waiting) is None  # a finished run waits for nothing
    assert (await store.get_run(run.id)) == done


async def test_queued_runs_no_lease_holds_are_told_what_they_wait_for(
    store: Store, clock: Clock
) -> None:
    free, _ = await store.request_run(request("free"))
    held, _ = await store.request_run(request("held"))
    told, _ = await store.request_run(request("told"))
    assert await store.acquire_run("node-a", held.id, 60) is not None
    earlier = run_wait("concurrency", "run 9 of concurrency group 'g' goes first", clock.now)
    await store.set_run_wait(told.id, earlier)
    circuit = run_wait("executor", "the executor's circuit breaker is open", clock.now)
    assert await store.note_queued_waits(circuit) == [free.id]
    assert (await store.get_run(free.id)).wait == circuit  # type: ignore[union-attr]
    assert (await store.get_run(held.id)).wait is None  # type: ignore[union-attr]
    assert (await store.get_run(told.id)).wait == earlier  # type: ignore[union-attr]
    started = await store.transition_run(free.id, "running")
    assert started is not None
    assert started.wait is None


async def test_cancelled_runs_names_those_cancelled_among_the_asked(store: Store) -> None:
    ids = [(await store.request_run(request(f"c{i}")))[0].id for i in range(3)]
    assert await store.cancelled_runs(ids) == []
    assert await store.cancelled_runs([]) == []
    await store.transition_run(ids[0], "running")
    await store.transition_run(ids[0], "cancelled", error="by a test")
    await store.transition_run(ids[2], "cancelled", error="by a test")
    assert await store.cancelled_runs(ids) == [ids[0], ids[2]]
    assert await store.cancelled_runs(ids[1:]) == [ids[2]]


# -- leases ----------------------------------------------------------------------------------


async def test_acquire_gives_each_run_to_one_node(store: Store) -> None:
    for i in range(5):
        await store.request_run(request(f"k{i}"))
    a = await store.acquire_runs("node-a", 60, 3)
    b = await store.acquire_runs("node-b", 60, 10)
    assert len(a) == 3
    assert len(b) == 2
    assert not {r.id for r in a} & {r.id for r in b}
    assert all(r.lease_owner == "node-a" for r in a)
    assert await store.acquire_runs("node-c", 60, 10) == []


async def test_expired_lease_is_reaped_and_acquired_again(store: Store, clock: Clock) -> None:
    run, _ = await store.request_run(request("k"))
    await store.acquire_runs("node-a", 30, 10)
    clock.advance(31)
    assert await store.extend_leases("node-a", [run.id], 30) == []  # too late: lost
    assert await store.reap_abandoned() == [run.id]
    (again,) = await store.acquire_runs("node-b", 30, 10)
    assert again.id == run.id
    assert again.lease_owner == "node-b"
    assert not await store.release_run("node-a", run.id)
    assert await store.release_run("node-b", run.id)
    assert (await store.get_run(run.id)).lease_owner is None  # type: ignore[union-attr]


async def test_acquire_one_run_by_id(store: Store) -> None:
    first, _ = await store.request_run(request("k1"))
    second, _ = await store.request_run(request("k2", concurrency_group="g"))
    held = await store.acquire_run("cli", second.id, 30)
    assert held is not None
    assert held.lease_owner == "cli"
    assert await store.acquire_run("other", second.id, 30) is None
    assert [r.id for r in await store.acquire_runs("worker", 30, 10)] == [first.id]
    assert [r.id for r in await store.list_runs(group="g")] == [second.id]


async def test_extend_keeps_a_live_lease(store: Store, clock: Clock) -> None:
    run, _ = await store.request_run(request("k"))
    await store.acquire_runs("node-a", 30, 10)
    clock.advance(20)
    assert await store.extend_leases("node-a", [run.id], 30) == [run.id]
    clock.advance(20)
    assert await store.acquire_runs("node-b", 30, 10) == []
    assert await store.reap_abandoned() == []


# -- sources and revisions -------------------------------------------------------------------


async def test_apply_revision_is_atomic_and_keeps_old_revisions(store: Store) -> None:
    assert await store.applied_documents("main") == (None, [])
    await store.apply_revision("main", "r1", [doc("a", "d1"), doc("b", "d2")])
    await store.apply_revision("main", "r2", [doc("a", "d1"), doc("c", "d3", kind="Agent")])
    revision, docs = await store.applied_documents("main")
    assert revision == "r2"
    assert [(d.kind, d.name, d.digest) for d in docs] == [
        ("Agent", "c", "d3"),
        ("Workflow", "a", "d1"),
    ]
    assert docs[1].content == {"metadata": {"name": "a"}, "v": "d1"}
    old = await store.revision_documents("main", "r1")
    assert [d.name for d in old] == ["a", "b"]
    await store.apply_revision("main", "r2", [doc("zzz", "d9")])  # already applied: no change
    assert [d.name for d in (await store.applied_documents("main"))[1]] == ["c", "a"]


def names(docs: list[StoredDocument]) -> list[tuple[str, str, str]]:
    return [(d.kind, d.name, d.digest) for d in docs]


async def test_apply_changes_writes_a_revision_as_a_change_to_its_parent(store: Store) -> None:
    await store.apply_revision("main", "r1", [doc("a", "d1"), doc("b", "d2")])
    assert await store.apply_changes(
        "main",
        "r2",
        parent="r1",
        changed=[doc("b", "d4"), doc("c", "d3", kind="Agent")],
        removed=[],
    )
    assert await store.apply_changes(
        "main", "r3", parent="r2", changed=[], removed=[("Workflow", "a")]
    )
    assert await store.applied_documents("main") == (
        "r3",
        await store.revision_documents("main", "r3"),
    )
    assert names(await store.revision_documents("main", "r3")) == [
        ("Agent", "c", "d3"),
        ("Workflow", "b", "d4"),
    ]
    assert names(await store.revision_documents("main", "r2")) == [
        ("Agent", "c", "d3"),
        ("Workflow", "a", "d1"),
        ("Workflow", "b", "d4"),
    ]
    assert names(await store.revision_documents("main", "r1")) == [
        ("Workflow", "a", "d1"),
        ("Workflow", "b", "d2"),
    ]
    (b,) = [d for d in await store.revision_documents("main", "r3") if d.name == "b"]
    assert (b.content, b.path) == ({"metadata": {"name": "b"}, "v": "d4"}, "workflows/b.yaml")
    # a revision stored already becomes the applied one; the changes given are ignored
    assert await store.apply_changes(
        "main", "r1", parent="r3", changed=[doc("z", "d9")], removed=[]
    )
    assert names((await store.applied_documents("main"))[1]) == names(
        await store.revision_documents("main", "r1")
    )


async def test_apply_changes_refuses_a_parent_that_is_not_stored(store: Store) -> None:
    await store.apply_revision("main", "r1", [doc("a", "d1")])
    assert not await store.apply_changes("main", "r2", parent="nope", changed=[], removed=[])
    assert not await store.apply_changes("other", "r2", parent="r1", changed=[], removed=[])
    assert (await store.applied_documents("main"))[0] == "r1"
    assert await store.revision_documents("main", "r2") == []
    assert await store.applied_documents("other") == (None, [])


async def test_apply_changes_stays_right_as_a_source_grows_and_shrinks(store: Store) -> None:
    """Crossing the sizes at which a revision's list is laid out again (up and down)."""
    expected = {f"w{i}": f"d{i}" for i in range(3)}
    await store.apply_revision("main", "r0", [doc(n, d) for n, d in expected.items()])
    steps: list[tuple[list[StoredDocument], list[str]]] = [
        ([doc(f"w{i}", f"d{i}") for i in range(3, 300)], []),  # grows 100x
        ([doc("w5", "x5"), doc("w299", "x299")], ["w7", "w8"]),
        ([], [f"w{i}" for i in range(10, 300)]),  # shrinks 30x
        ([doc("w1", "y1")], ["w0", "w2", "w3", "w4", "w5", "w6", "w9"]),
        ([], ["w1"]),  # empty
        ([doc("back", "b")], []),
    ]
    for n, (changed, removed) in enumerate(steps, start=1):
        assert await store.apply_changes(
            "main",
            f"r{n}",
            parent=f"r{n - 1}",
            changed=changed,
            removed=[("Workflow", name) for name in removed],
        )
        for name in removed:
            del expected[name]
        expected.update({d.name: d.digest for d in changed})
        found = await store.revision_documents("main", f"r{n}")
        assert sorted((d.name, d.digest) for d in found) == sorted(expected.items())
    assert names(await store.revision_documents("main", "r0")) == [
        ("Workflow", f"w{i}", f"d{i}") for i in range(3)
    ]


async def test_source_status_round_trip_keeps_the_applied_revision(store: Store) -> None:
    await store.apply_revision("main", "r1", [])
    status = SourceStatus(
        name="main",
        attempted_revision="r2",
        attempted_at=5.0,
        conditions=(Condition(type="Ready", status=False, reason="Invalid", message="2 errors"),),
        errors=({"path": "workflows/a.yaml", "line": 3, "column": 5, "message": "bad"},),
        last_fetch_at=4.0,
        last_fetch_duration=0.25,
    )
    await store.save_source_status(status)
    saved = await store.get_source_status("main")
    assert saved is not None
    assert saved.applied_revision == "r1"
    assert saved.attempted_revision == "r2"
    assert saved.conditions == status.conditions
    assert saved.errors == status.errors
    assert [s.name for s in await store.list_source_statuses()] == ["main"]
    assert await store.get_source_status("nope") is None


# -- events ----------------------------------------------------------------------------------


async def test_duplicate_delivery_is_recognised(store: Store) -> None:
    args = {"forge": "github", "delivery_id": "d-1", "event_type": "push"}
    first, new = await store.add_event(**args, headers={"X-A": "1"}, body=b"{}")
    again, new_again = await store.add_event(**args, headers={"X-A": "2"}, body=b"[]")
    assert new
    assert not new_again
    assert again.id == first.id
    assert again.body == b"{}"
    other, new_other = await store.add_event(
        forge="gitlab", delivery_id="d-1", event_type="push", headers={}, body=b""
    )
    assert new_other
    assert other.id != first.id


async def test_events_are_claimed_once_and_finished(store: Store, clock: Clock) -> None:
    for i in range(3):
        await store.add_event(
            forge="github", delivery_id=f"d{i}", event_type="push", headers={}, body=b"x"
        )
    a = await store.claim_events("node-a", 30, 2)
    b = await store.claim_events("node-b", 30, 10)
    assert [e.delivery_id for e in a] == ["d0", "d1"]
    assert [e.delivery_id for e in b] == ["d2"]
    await store.finish_event(a[0].id)
    await store.finish_event(a[1].id, error="unparseable")
    clock.advance(31)
    again = await store.claim_events("node-c", 30, 10)
    assert [e.delivery_id for e in again] == ["d2"]
    assert again[0].attempts == 2


async def test_a_retried_event_waits_until_its_time_and_counts_its_attempts(
    store: Store, clock: Clock
) -> None:
    event, _ = await store.add_event(
        forge="github", delivery_id="r1", event_type="push", headers={}, body=b"{}"
    )
    [claimed] = await store.claim_events("node-a", 30, 10)
    assert claimed.attempts == 1
    await store.retry_event(event.id, error="forge away", not_before=clock.now + 10)
    assert await store.claim_events("node-b", 30, 10) == []  # not before its time
    clock.advance(11)
    [again] = await store.claim_events("node-b", 30, 10)
    assert (again.status, again.attempts, again.error) == ("pending", 2, "forge away")
    await store.finish_event(again.id, error="gave up after 2 attempts: forge away")
    redelivered, new = await store.add_event(
        forge="github", delivery_id="r1", event_type="push", headers={}, body=b"{}"
    )
    assert new  # a failed event delivered again is handled again, from its first attempt
    assert (redelivered.status, redelivered.attempts, redelivered.not_before) == (
        "pending",
        0,
        None,
    )


# -- steps and logs --------------------------------------------------------------------------


async def test_steps_keep_their_first_order(store: Store) -> None:
    run, _ = await store.request_run(request("k"))
    await store.save_step(StepRun(run_id=run.id, step_id="scan", status="running", attempt=1))
    await store.save_step(StepRun(run_id=run.id, step_id="review", status="pending"))
    await store.save_step(
        StepRun(
            run_id=run.id,
            step_id="scan",
            status="succeeded",
            attempt=1,
            outputs={"summary": {"high": 2}},
            inputs_digest="sha256:x",
        )
    )
    steps = await store.get_steps(run.id)
    assert [(s.step_id, s.status) for s in steps] == [("scan", "succeeded"), ("review", "pending")]
    assert steps[0].outputs == {"summary": {"high": 2}}


async def test_logs_append_read_by_offset_and_truncate_once(store: Store) -> None:
    run, _ = await store.request_run(request("k"))
    assert await store.append_log(run.id, "scan", b"0123456789") == 10
    assert await store.append_log(run.id, "scan", b"abcdefghij") == 20
    part = await store.read_log(run.id, "scan", offset=5, limit=10)
    assert part.data == b"56789abcde"
    assert part.next_offset == 15
    assert not part.truncated
    size = await store.append_log(run.id, "scan", b"x" * 100)  # the limit is 64 bytes
    assert await store.append_log(run.id, "scan", b"more") == size
    whole = await store.read_log(run.id, "scan")
    assert whole.data.startswith(b"0123456789abcdefghij" + b"x" * 44)
    assert whole.data.endswith(b"[runner: log truncated at 64 bytes; the rest was dropped]\n")
    assert whole.truncated
    assert (await store.get_steps(run.id))[0].log_truncated
    assert (await store.read_log(run.id, "scan", offset=len(whole.data))).data == b""


# -- approvals -------------------------------------------------------------------------------


async def test_approvals_bind_decisions_append_only(store: Store) -> None:
    run, _ = await store.request_run(request("k"))
    policy = ApprovalPolicy(required=2, approvers=("alice", "@acme/sec"), timeout=3600.0)
    gate = Approval(
        id=0,
        run_id=run.id,
        step_id="patch",
        status="pending",
        policy=policy,
        sha="c0ffee",
        revision="abc123",
        inputs_digest="sha256:in",
        requested_at=0.0,
        deadline=99.0,
    )
    opened = await store.create_approval(gate)
    assert opened.id > 0
    assert opened.policy == policy
    assert (await store.create_approval(gate)).id == opened.id  # one pending gate per step
    decision = Decision(
        approval_id=opened.id,
        actor="alice",
        decision="approve",
        via="comment",
        sha="c0ffee",
        revision="abc123",
        inputs_digest="sha256:in",
        comment="/approve",
        url="https://forge.example/pr/1#c1",
    )
    first = await store.add_decision(decision)
    second = await store.add_decision(decision.__class__(**{**decision.__dict__, "actor": "bob"}))
    assert [d.actor for d in await store.decisions(opened.id)] == ["alice", "bob"]
    assert first.id < second.id
    assert first.url == decision.url
    assert [a.id for a in await store.list_approvals(status="pending")] == [opened.id]
    closed = await store.close_approval(opened.id, "approved")
    assert closed is not None
    assert closed.status == "approved"
    assert await store.close_approval(opened.id, "rejected") is None
    assert await store.list_approvals(status="pending") == []
    assert [a.id for a in await store.list_approvals(run_id=run.id)] == [opened.id]


# -- retention -------------------------------------------------------------------------------


async def test_prune_keeps_recent_and_the_last_k_per_workflow(store: Store, clock: Clock) -> None:
    ids = {}
    for i in range(4):
        for workflow in ("a", "b"):
            run, _ = await store.request_run(request(f"{workflow}{i}", workflow=workflow))
            await store.transition_run(run.id, "running")
            await store.transition_run(run.id, "succeeded")
            await store.append_log(run.id, "s", b"log")
            ids[f"{workflow}{i}"] = run.id
        clock.advance(86400)
    live, _ = await store.request_run(request("live", workflow="a"))
    deleted = await store.prune(older_than=clock.now - 2.5 * 86400, keep_last=1)
    left = {r.id for r in await store.list_runs(limit=100)}
    # a0, a1, b0, b1 finished more than 2.5 days ago; none is its workflow's newest
    assert deleted == 4
    assert left == {ids["a2"], ids["a3"], ids["b2"], ids["b3"], live.id}
    assert (await store.read_log(ids["a0"], "s")).data == b""


async def test_the_database_refuses_to_alter_a_decision(store: Store, store_url: str) -> None:
    run, _ = await store.request_run(request("k"))
    gate = await store.create_approval(
        Approval(
            id=0,
            run_id=run.id,
            step_id="patch",
            status="pending",
            policy=ApprovalPolicy(),
            sha=None,
            revision="r",
            inputs_digest="d",
            requested_at=1.0,
        )
    )
    await store.add_decision(
        Decision(
            approval_id=gate.id,
            actor="alice",
            decision="approve",
            via="cli",
            sha=None,
            revision="r",
            inputs_digest="d",
        )
    )
    tamper = "UPDATE approval_decisions SET actor = 'mallory'"
    if store_url.startswith("sqlite"):
        with (
            sqlite3.connect(store_url.removeprefix("sqlite:///")) as conn,
            pytest.raises(sqlite3.DatabaseError, match="append-only"),
        ):
            conn.execute(tamper)
    else:
        with (
            psycopg.connect(store_url) as conn,
            pytest.raises(psycopg.errors.RaiseException, match="append-only"),
        ):
            conn.execute(tamper)
    assert [d.actor for d in await store.decisions(gate.id)] == ["alice"]
