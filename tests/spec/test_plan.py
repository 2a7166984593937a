"""Plans between two compiled bundles, with a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from runner.model import Bundle
from runner.spec.plan import make_plan
from runner.spec.repo import load_paths

EXAMPLE = Path(__file__).parents[2] / "workflows-repo-example"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_first_apply_adds_everything_and_shows_next_fires() -> None:
    bundle = load_paths([str(EXAMPLE)]).bundle
    plan = make_plan(bundle, Bundle(), now=NOW)
    assert {(c.kind, c.name) for c in plan.changes if c.action == "added"} == {
        ("workflow", "pr-security-review"),
        ("workflow", "nightly-compliance"),
        ("workflow", "deploy-check"),
        ("agent", "spdx-headers"),
    }
    (schedule,) = plan.schedules
    assert schedule.action == "added"
    assert [f.isoformat() for f in schedule.next_fires] == [
        "2026-11-29T03:00:00+01:00",
        "2026-11-30T03:00:00+01:00",
        "2026-12-01T03:00:00+01:00",
    ]
    (gate,) = plan.gates
    assert (gate.workflow, gate.step, gate.policy.required) == ("pr-security-review", "patch", 1)
    assert gate.policy.approvers == ("@acme/security", "alice")


def test_same_bundle_is_no_change() -> None:
    bundle = load_paths([str(EXAMPLE)]).bundle
    plan = make_plan(bundle, bundle, now=NOW)
    assert plan.count("added") == plan.count("changed") == plan.count("removed") == 0
    assert [s.action for s in plan.schedules] == ["unchanged"]
