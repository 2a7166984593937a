"""Which steps of a run can start, which are skipped, and how the run ends: pure functions over
step statuses, with GitHub Actions' semantics for `needs` and `run_if`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from runner.model import RunStatus, Step, Workflow

DONE = frozenset({"succeeded", "failed", "skipped", "cancelled", "rejected"})
FAILED = frozenset({"failed", "rejected"})

Decision = Literal["wait", "run", "skip"]


def ancestors(workflow: Workflow) -> dict[str, frozenset[str]]:
    """Every step's transitive needs."""
    needs = {s.id: s.needs for s in workflow.steps}
    out: dict[str, frozenset[str]] = {}
    for step in workflow.steps:
        seen: set[str] = set()
        todo = list(step.needs)
        while todo:
            need = todo.pop()
            if need not in seen:
                seen.add(need)
                todo.extend(needs.get(need, ()))
        out[step.id] = frozenset(seen)
    return out


def decide(step: Step, status: Mapping[str, str], upstream: frozenset[str]) -> Decision:
    """Whether `step` waits (a need is unfinished), runs or is skipped.

    success (default): every need succeeded. failure: some step upstream failed or was
    rejected. always: whatever happened upstream.
    """
    if any(status.get(need) not in DONE for need in step.needs):
        return "wait"
    if step.run_if == "always":
        return "run"
    if step.run_if == "failure":
        return "run" if any(status.get(s) in FAILED for s in upstream) else "skip"
    return "run" if all(status.get(need) == "succeeded" for need in step.needs) else "skip"


def outcome(status: Mapping[str, str]) -> RunStatus:
    """How a run whose steps are all done ends."""
    values = set(status.values())
    if "failed" in values:
        return "failed"
    if "rejected" in values:
        return "rejected"
    if "cancelled" in values:
        return "cancelled"
    return "succeeded"
