"""The engine as a workflow author sees it: order, data flow, skips, failures, retries, gates."""

from __future__ import annotations

import pytest

from runner.approvals import Channel, Identity, NotAllowed, decide
from tests.dag.conftest import Harness

pytestmark = pytest.mark.anyio


async def test_outputs_flow_downstream_with_their_types(harness: Harness) -> None:
    harness.write(
        "flow",
        """\
        apiVersion: runner/v1
        kind: Workflow
        metadata: {name: flow}
        spec:
          triggers: [{manual: {}}]
          steps:
            - id: a
              agent: echo
              with: {value: [1, 2, 3], n: 5}
            - id: b
              agent: echo
              needs: [a]
              with:
                value: "${{ steps.a.outputs.value }}"
                n: "${{ steps.a.outputs.n + 1 }}"
            - id: c
              agent: echo
              needs: [b]
              with: {value: "got ${{ steps.b.outputs.n }} from ${{ steps.a.status }}"}
        """,
    )
    run = await harness.go((await harness.start("flow")).id)
    assert run.status == "succeeded"
    steps = {s.step_id: s for s in await harness.store.get_steps(run.id)}
    assert steps["b"].outputs == {"value": [1, 2, 3], "n": 6}
    assert steps["c"].outputs == {"value": "got 6 from succeeded", "n": 0}
    log = await harness.store.read_log(run.id, "b")
    assert b'inputs {"n": 6, "value": [1, 2, 3]}' in log.data


FAILING = """\
apiVersion: runner/v1
kind: Workflow
metadata: {name: failing}
spec:
  triggers: [{manual: {}}]
  steps:
    - id: build
      agent: echo
      with: {fail: 2}
    - id: independent
      agent: echo
    - id: deploy
      agent: echo
      needs: [build]
    - id: after_deploy
      agent: echo
      needs: [deploy]
    - id: on_failure
      agent: echo
      needs: [after_deploy]
      run_if: failure
    - id: cleanup
      agent: echo
      needs: [deploy]
      run_if: always
    - id: maybe
      agent: echo
      needs: [independent]
      when: "steps.independent.outputs.n > 0"
"""


async def test_failure_and_skip_propagate_like_github_actions(harness: Harness) -> None:
    harness.write("failing", FAILING)
    run = await harness.go((await harness.start("failing")).id)
    assert run.status == "failed"
    assert await harness.statuses(run.id) == {
        "build": "failed",
        "independent": "succeeded",
        "deploy": "skipped",
        "after_deploy": "skipped",
        "on_failure": "succeeded",
        "cleanup": "succeeded",
        "maybe": "skipped",
    }
    log = await harness.store.read_log(run.id, "build")
    assert not log.truncated


async def test_retry_with_backoff_then_fail(harness: Harness) -> None:
    counter = harness.tmp / "count.txt"
    harness.write(
        "retrying",
        f"""\
        apiVersion: runner/v1
        kind: Workflow
        metadata: {{name: retrying}}
        spec:
          triggers: [{{manual: {{}}}}]
          steps:
            - id: flaky
              agent: echo
              with: {{fail: 1, count_file: "{counter}"}}
              retry: {{max: 2, backoff: 10ms}}
        """,
    )
    run = await harness.go((await harness.start("retrying")).id)
    assert run.status == "failed"
    assert counter.read_text().splitlines() == ["flaky"] * 3
    (step,) = await harness.store.get_steps(run.id)
    assert step.attempt == 3
    assert step.error == "the agent exited with code 1"
    assert b"retrying in" in (await harness.store.read_log(run.id, "flaky")).data


GATED = """\
apiVersion: runner/v1
kind: Workflow
metadata: {name: gated}
spec:
  triggers: [{manual: {}}]
  steps:
    - id: scan
      agent: echo
      with: {n: 3}
    - id: patch
      agent: risky
      needs: [scan]
      with: {n: "${{ steps.scan.outputs.n }}"}
      approval: {required: 2, approvers: [alice, bob, "@acme/sec"]}
    - id: notify
      agent: echo
      needs: [patch]
      run_if: always
"""


async def test_gate_waits_and_needs_distinct_allowed_approvers(harness: Harness) -> None:
    harness.write("gated", GATED)
    run = await harness.go((await harness.start("gated", actor="bob")).id)
    assert run.status == "waiting_approval"
    assert run.lease_owner is None
    assert await harness.statuses(run.id) == {"scan": "succeeded", "patch": "waiting_approval"}
    (gate,) = await harness.store.list_approvals(status="pending")
    assert run.wait == {
        "for": "approval",
        "reason": f"step patch waits for approval {gate.id}",
        "since": gate.requested_at,
        "next_attempt": None,
    }
    with pytest.raises(NotAllowed, match="bob is an author of this change"):
        await decide(
            harness.store,
            gate.id,
            who=Identity(name="bob"),
            decision="approve",
            channel=Channel(via="cli"),
        )
    with pytest.raises(NotAllowed, match="mallory is not among the approvers"):
        await decide(
            harness.store,
            gate.id,
            who=Identity(name="mallory"),
            decision="approve",
            channel=Channel(via="cli"),
        )
    first = await decide(
        harness.store,
        gate.id,
        who=Identity(name="alice"),
        decision="approve",
        channel=Channel(via="cli"),
    )
    again = await decide(
        harness.store,
        gate.id,
        who=Identity(name="alice"),
        decision="approve",
        channel=Channel(via="cli"),
    )
    assert (first.status, again.status, again.approvals) == ("pending", "pending", 1)
    member = Identity(name="carol", teams=frozenset({"acme/sec"}))
    done = await decide(
        harness.store, gate.id, who=member, decision="approve", channel=Channel(via="api")
    )
    assert done.status == "approved"
    run = await harness.go(run.id)
    assert run.status == "succeeded"
    assert run.wait is None
    assert await harness.statuses(run.id) == {
        "scan": "succeeded",
        "patch": "succeeded",
        "notify": "succeeded",
    }
    decisions = await harness.store.decisions(gate.id)
    assert [(d.actor, d.via) for d in decisions] == [
        ("alice", "cli"),
        ("alice", "cli"),
        ("carol", "api"),
    ]
    assert all(d.inputs_digest == gate.inputs_digest for d in decisions)


async def test_rejection_ends_the_run_rejected(harness: Harness) -> None:
    harness.write("gated", GATED)
    run = await harness.go((await harness.start("gated")).id)
    (gate,) = await harness.store.list_approvals(status="pending")
    await decide(
        harness.store,
        gate.id,
        who=Identity(name="alice"),
        decision="reject",
        channel=Channel(via="cli"),
    )
    run = await harness.go(run.id)
    assert run.status == "rejected"
    statuses = await harness.statuses(run.id)
    assert statuses["patch"] == "rejected"
    assert statuses["notify"] == "succeeded"  # run_if: always


async def test_inputs_defaults_and_when(harness: Harness) -> None:
    harness.write(
        "inputs",
        """\
        apiVersion: runner/v1
        kind: Workflow
        metadata: {name: inputs}
        spec:
          triggers: [{manual: {}}]
          inputs:
            type: object
            properties: {level: {type: string, default: high}}
          steps:
            - id: only_high
              agent: echo
              when: "inputs.level == 'high'"
              with: {value: "${{ inputs.level }}"}
            - id: only_low
              agent: echo
              when: "inputs.level == 'low'"
        """,
    )
    run = await harness.go((await harness.start("inputs", inputs={"level": "high"})).id)
    assert await harness.statuses(run.id) == {"only_high": "succeeded", "only_low": "skipped"}
    assert run.status == "succeeded"


async def test_parallel_steps_run_at_once(harness: Harness) -> None:
    steps = "\n".join(f"    - {{id: s{i}, agent: echo, with: {{sleep: 1}}}}" for i in range(4))
    harness.write(
        "wide",
        "apiVersion: runner/v1\nkind: Workflow\nmetadata: {name: wide}\n"
        f"spec:\n  triggers: [{{manual: {{}}}}]\n  steps:\n{steps}\n",
    )
    run = await harness.go((await harness.start("wide")).id)
    records = await harness.store.get_steps(run.id)
    starts = sorted(r.started_at or 0 for r in records)
    ends = sorted(r.finished_at or 0 for r in records)
    assert run.status == "succeeded"
    assert starts[-1] < ends[0]  # all four started before any finished
