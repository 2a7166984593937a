"""What applying a bundle would change relative to another: the `runner plan` report.

Documents are compared by content digest, so reformatting or re-commenting a file is no change.
Built-in agents are part of the runner, not of the repo, and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from runner.model import ApprovalPolicy, Bundle, Schedule
from runner.spec.timing import next_fires

Action = Literal["added", "changed", "removed", "unchanged"]


@dataclass(frozen=True, kw_only=True)
class Change:
    kind: Literal["workflow", "agent"]
    name: str
    action: Action


@dataclass(frozen=True, kw_only=True)
class ScheduleChange:
    schedule: Schedule
    action: Literal["added", "removed", "unchanged"]
    next_fires: tuple[datetime, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Gate:
    workflow: str
    step: str
    policy: ApprovalPolicy


@dataclass(frozen=True, kw_only=True)
class Plan:
    changes: tuple[Change, ...]
    schedules: tuple[ScheduleChange, ...]
    gates: tuple[Gate, ...]

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action == action)


def _diff(
    kind: Literal["workflow", "agent"], new: dict[str, str], old: dict[str, str]
) -> list[Change]:
    changes = []
    for name in sorted(new.keys() | old.keys()):
        if name not in old:
            action: Action = "added"
        elif name not in new:
            action = "removed"
        else:
            action = "unchanged" if new[name] == old[name] else "changed"
        changes.append(Change(kind=kind, name=name, action=action))
    return changes


def make_plan(new: Bundle, old: Bundle, *, now: datetime, fires: int = 3) -> Plan:
    """Changes from `old` to `new`; added and kept schedules with their next `fires` times."""
    changes = _diff(
        "workflow",
        {n: w.digest for n, w in new.workflows.items()},
        {n: w.digest for n, w in old.workflows.items()},
    ) + _diff(
        "agent",
        {n: a.digest for n, a in new.agents.items() if not a.builtin},
        {n: a.digest for n, a in old.agents.items() if not a.builtin},
    )
    new_schedules = {s for w in new.workflows.values() for s in w.schedules}
    old_schedules = {s for w in old.workflows.values() for s in w.schedules}
    schedules = [
        ScheduleChange(
            schedule=s,
            action="unchanged" if s in old_schedules else "added",
            next_fires=tuple(next_fires(s.cron, s.timezone, now, fires)),
        )
        for s in sorted(new_schedules, key=lambda s: (s.workflow, s.cron, s.timezone))
    ] + [
        ScheduleChange(schedule=s, action="removed")
        for s in sorted(old_schedules - new_schedules, key=lambda s: (s.workflow, s.cron))
    ]
    gates = [
        Gate(workflow=w.name, step=step.id, policy=step.approval)
        for w in sorted(new.workflows.values(), key=lambda w: w.name)
        for step in w.steps
        if step.approval is not None
    ]
    return Plan(changes=tuple(changes), schedules=tuple(schedules), gates=tuple(gates))
