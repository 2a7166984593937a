"""Cancellation, retries, timeouts and concurrency groups."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from runner.approvals import Channel, Identity, NotAllowed, decide, expire_due
from runner.dag import control
from runner.dag.engine import EngineOptions
from runner.reporting import Reporter
from tests.dag.conftest import Harness
from tests.dag.test_engine import GATED

pytestmark = pytest.mark.anyio

HOLDING = """\
apiVersion: runner/v1
kind: Workflow
metadata: {{name: holding}}
spec:
  triggers: [{{manual: {{}}}}]
  {extra}
  steps:
    - {{id: wait, agent: echo, with: {{hold_file: "{hold}"}}}}
    - {{id: after, agent: echo, needs: [wait]}}
"""


def fast(harness: Harness) -> None:
    harness.engine.options = EngineOptions(node="test-node", lease=1.5)


async def test_cancel_stops_running_steps(harness: Harness) -> None:
    hold = harness.tmp / "hold"
    hold.touch()
    harness.write("holding", HOLDING.format(hold=hold, extra=""))
    fast(harness)
    run = await harness.start("holding")
    task = asyncio.create_task(harness.go(run.id))
    while (await harness.statuses(run.id)).get("wait") != "running":
        await asyncio.sleep(0.05)
    await control.cancel(harness.store, run.id, reason="not needed")
    done = await asyncio.wait_for(task, 30)
    assert done.status == "cancelled"
    assert done.error == "not needed"
    assert await harness.statuses(run.id) == {"wait": "cancelled", "after": "cancelled"}
    with pytest.raises(Exception, match="only an unfinished run can be cancelled"):
        await control.cancel(harness.store, run.id)


async def test_workflow_timeout_fails_the_run(harness: Harness) -> None:
    hold = harness.tmp / "hold"
    hold.touch()
    harness.write("holding", HOLDING.format(hold=hold, extra="timeout: 1s"))
    run = await asyncio.wait_for(harness.go((await harness.start("holding")).id), 30)
    assert run.status == "failed"
    assert run.error == "the workflow timed out after 1s"
    assert await harness.statuses(run.id) == {"wait": "cancelled", "after": "cancelled"}


async def test_retry_reruns_what_did_not_succeed(harness: Harness) -> None:
    flag = harness.tmp / "flag"
    harness.write(
        "twice",
        f"""\
        apiVersion: runner/v1
        kind: Workflow
        metadata: {{name: twice}}
        spec:
          triggers: [{{manual: {{}}}}]
          steps:
            - {{id: ok, agent: echo, with: {{count_file: "{harness.tmp}/count"}}}}
            - {{id: flaky, agent: echo, needs: [ok], with: {{hold_file: "{flag}"}}, timeout: 1s}}
            - {{id: after, agent: echo, needs: [flaky]}}
        """,
    )
    flag.touch()
    run = await harness.go((await harness.start("twice")).id)
    assert run.status == "failed"
    flag.unlink()
    await control.retry(harness.store, run.id)
    run = await harness.go(run.id)
    assert run.status == "succeeded"
    assert (harness.tmp / "count").read_text().splitlines() == ["ok"]  # not run again
    steps = {s.step_id: s for s in await harness.store.get_steps(run.id)}
    assert (steps["flaky"].attempt, steps["after"].status) == (2, "succeeded")


async def test_retried_gate_needs_a_fresh_approval(harness: Harness) -> None:
    harness.write("gated", GATED.replace("required: 2", "required: 1").replace("n: 3", "fail: 1"))
    run = await harness.go((await harness.start("gated")).id)
    assert run.status == "failed"  # scan fails: patch skipped, never gated
    await control.retry(harness.store, run.id)
    harness.write("gated", GATED.replace("required: 2", "required: 1"))
    fresh = await harness.go((await harness.start("gated", key="second")).id)
    (gate,) = await harness.store.list_approvals(run_id=fresh.id)
    await decide(
        harness.store,
        gate.id,
        who=Identity(name="alice"),
        decision="reject",
        channel=Channel(via="cli"),
    )
    assert (await harness.go(fresh.id)).status == "rejected"
    await control.retry(harness.store, fresh.id)
    again = await harness.go(fresh.id)
    assert again.status == "waiting_approval"
    gates = await harness.store.list_approvals(run_id=fresh.id)
    assert [g.status for g in gates] == ["rejected", "pending"]


async def test_approval_timeout_applies_on_timeout(harness: Harness) -> None:
    text = GATED.replace(
        'required: 2, approvers: [alice, bob, "@acme/sec"]', "timeout: 1s, on_timeout: approve"
    )
    harness.write("gated", text)
    run = await harness.go((await harness.start("gated")).id)
    assert run.status == "waiting_approval"
    (gate,) = await harness.store.list_approvals(status="pending")
    with pytest.raises(NotAllowed, match="timed out; on_timeout \\(approve\\) applies"):
        await decide(
            harness.store,
            gate.id,
            who=Identity(name="alice", can_write=True),
            decision="reject",
            channel=Channel(via="cli"),
            now=gate.requested_at + 5,
        )
    assert [g.status for g in await harness.store.list_approvals(run_id=run.id)] == ["expired"]
    run = await harness.go(run.id)
    assert run.status == "succeeded"
    (decision,) = await harness.store.decisions(gate.id)
    assert (decision.actor, decision.via, decision.decision) == ("runner", "timeout", "approve")


async def test_expire_due_closes_only_past_deadlines(harness: Harness) -> None:
    text = GATED.replace(
        'required: 2, approvers: [alice, bob, "@acme/sec"]', "timeout: 1s, on_timeout: approve"
    )
    harness.write("gated", text)
    run = await harness.go((await harness.start("gated")).id)
    (gate,) = await harness.store.list_approvals(status="pending")
    assert await expire_due(harness.store, gate.requested_at + 0.5) == []
    (expired,) = await expire_due(harness.store, gate.requested_at + 2)
    assert expired.status == "expired"
    run = await harness.go(run.id)
    assert run.status == "succeeded"
    (decision,) = await harness.store.decisions(gate.id)
    assert (decision.actor, decision.via, decision.decision) == ("runner", "timeout", "approve")


@pytest.mark.parametrize(
    ("policy", "first", "second"),
    [
        ("queue", "succeeded", "succeeded"),
        ("cancel-running", "cancelled", "succeeded"),
        ("skip", "succeeded", "skipped"),
    ],
)
async def test_concurrency_groups(harness: Harness, policy: str, first: str, second: str) -> None:
    hold = harness.tmp / "hold"
    hold.touch()
    harness.write(
        "holding", HOLDING.format(hold=hold, extra=f"concurrency: {{group: g, policy: {policy}}}")
    )
    fast(harness)
    one = await harness.start("holding", key="one", concurrency_group="g")
    two = await harness.start("holding", key="two", concurrency_group="g")
    task = asyncio.create_task(harness.go(one.id))
    while (await harness.statuses(one.id)).get("wait") != "running":
        await asyncio.sleep(0.05)
    if policy == "cancel-running":  # two cancels one, then runs once the hold is gone
        second_task = asyncio.create_task(harness.go(two.id))
        assert (await asyncio.wait_for(task, 30)).status == first
        hold.unlink()
        held = await asyncio.wait_for(second_task, 30)
    else:
        held = await harness.go(two.id)
        if policy == "queue":
            assert held.status == "queued"  # it waits behind run one, and says so
            assert held.wait is not None
            assert (held.wait["for"], held.wait["next_attempt"]) == ("concurrency", None)
            assert held.wait["reason"] == f"run {one.id} of concurrency group 'g' goes first"
            stored = await harness.store.get_run(two.id)
            assert stored is not None
            assert stored.wait == held.wait
        hold.unlink()
        assert (await asyncio.wait_for(task, 30)).status == first
        if held.status == "queued":
            held = await harness.go(two.id)
    assert held.status == second
    assert held.wait is None


class Forge:
    """Records what a run reports to its forge (a `ForgeReporting`)."""

    def __init__(self) -> None:
        self.statuses: list[tuple[str, str]] = []  # (state, description)
        self.comments: dict[str, str] = {}  # marker -> body

    async def status(
        self, repository: str, sha: str, context: str, state: str, description: str
    ) -> None:
        self.statuses.append((state, description))

    async def upsert_comment(self, repository: str, number: int, marker: str, body: str) -> None:
        self.comments[marker] = body


GATED_GROUP = """\
apiVersion: runner/v1
kind: Workflow
metadata: {{name: gated}}
spec:
  triggers: [{{manual: {{}}}}]
  {extra}
  steps:
    - {{id: slow, agent: echo, with: {{hold_file: "{hold}"}}}}
    - {{id: ship, agent: risky, approval: {{approvers: [alice]}}}}
"""
FROM_PR = {  # the trigger of a pull request's delivery
    "forge": "github",
    "repository": "acme/app",
    "sha": "a" * 40,
    "pull_request": {"number": 9},
}


def cancelled_count(workflow: str) -> float:
    value = REGISTRY.get_sample_value(
        "runner_runs_total", {"workflow": workflow, "outcome": "cancelled"}
    )
    return value or 0.0


def with_forge(harness: Harness) -> Forge:
    forge = Forge()
    harness.engine.reporter = Reporter({"github": forge})
    return forge


async def test_cancel_running_finishes_an_older_run_waiting_at_its_gate(harness: Harness) -> None:
    harness.write(
        "gated",
        GATED_GROUP.format(hold="", extra="concurrency: {group: g, policy: cancel-running}"),
    )
    forge = with_forge(harness)
    before = cancelled_count("gated")
    one = await harness.start("gated", key="one", concurrency_group="g", trigger=FROM_PR)
    assert (await harness.go(one.id)).status == "waiting_approval"
    (gate,) = await harness.store.list_approvals(run_id=one.id, status="pending")
    two = await harness.start("gated", key="two", concurrency_group="g", trigger=FROM_PR)
    assert (await harness.go(two.id)).status == "waiting_approval"

    older = await harness.store.get_run(one.id)
    assert older is not None
    assert older.status == "cancelled"
    assert older.error == f"cancelled by run {two.id} of concurrency group 'g'"
    closed = await harness.store.get_approval(gate.id)
    assert closed is not None
    assert closed.status == "rejected"
    with pytest.raises(NotAllowed, match="is closed: the run was cancelled"):
        await decide(
            harness.store,
            gate.id,
            who=Identity(name="alice", can_write=True),
            decision="approve",
            channel=Channel(via="api"),
        )
    assert ("error", f"cancelled: {older.error}") in forge.statuses
    body = forge.comments[f"<!-- runner:run:{one.id} -->"]
    assert "**cancelled**" in body
    assert "/approve" not in body
    assert "/approve" in forge.comments[f"<!-- runner:run:{two.id} -->"]  # the newer one asks
    assert cancelled_count("gated") == before + 1


async def test_workflow_timeout_closes_a_gate_that_waits_beside_a_running_step(
    harness: Harness,
) -> None:
    hold = harness.tmp / "hold"
    hold.touch()
    harness.write("gated", GATED_GROUP.format(hold=hold, extra="timeout: 1s"))
    forge = with_forge(harness)
    run = await harness.start("gated", trigger=FROM_PR)
    done = await asyncio.wait_for(harness.go(run.id), 30)
    assert done.status == "failed"
    assert done.error == "the workflow timed out after 1s"
    assert await harness.store.list_approvals(run_id=run.id, status="pending") == []
    (gate,) = await harness.store.list_approvals(run_id=run.id)
    assert gate.status == "rejected"
    assert forge.statuses[-1][0] == "failure"
    assert "/approve" not in forge.comments[f"<!-- runner:run:{run.id} -->"]
