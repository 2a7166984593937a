"""What applying a bundle would change relative to another: the `runner plan` report.

Documents are compared by content digest, so reformatting or re-commenting a file is no change.
Built-in agents are part of the runner, not of the repo, and are left out of the changes.

Besides what changes, a plan says what the change grants: merging a pull request to the
workflows repo can give an agent a secret, network access or steps that no longer wait for
approval, and "agent x: changed" hides that from the reviewer who approves the merge. So each
widening of an agent's reach is its own record (`AgentChange.widened`, `AgentChange.steps`),
and narrowing is kept apart (`AgentChange.narrowed`) so that it never drowns the widening.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from runner.model import Agent, ApprovalPolicy, Bundle, Schedule, Workflow
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
class Reach:
    """One change in what an agent may reach; `widens` when the new bundle grants more.

    `old` and `new` are, for a secret, its name or None when it is not asked for; for network,
    "off" or "on"; for risk, the agent's risk. On the side where the agent does not exist
    (added or removed), both network and risk are None.
    """

    kind: Literal["secret", "network", "risk"]
    old: str | None
    new: str | None
    widens: bool


@dataclass(frozen=True, kw_only=True)
class StepReach:
    """A workflow step that reaches further through the agent it runs: it is new or switched
    from another agent (`was`) and so gains `secrets` and/or `network`, or it waited for
    approval and no longer does (`ungated`)."""

    workflow: str
    step: str
    was: str | None  # the agent the step ran before; None for a new step
    secrets: tuple[str, ...] = ()
    network: bool = False
    ungated: bool = False
    # how its approval gate got weaker (fewer approvals, more approvers, authors allowed, or
    # a timeout that approves by itself), each in words
    weakened: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class AgentChange:
    """An agent whose file changed, or which steps now reach further through.

    `file` is its agent.yaml (Agent.source) in the new bundle, or in the old one when removed;
    "" for a built-in, which appears only through `steps` (a PR cannot change a built-in)."""

    name: str
    file: str
    action: Action
    builtin: bool = False
    widened: tuple[Reach, ...] = ()
    narrowed: tuple[Reach, ...] = ()
    steps: tuple[StepReach, ...] = ()
    # its program (the files beside agent.yaml) changed; what it holds runs the new code
    program: bool = False
    program_files: tuple[str, ...] = ()  # the files of it that changed
    holds_secrets: tuple[str, ...] = ()
    holds_network: bool = False

    @property
    def new_code_holds(self) -> bool:
        """New code that receives secrets or the network: reviewers must read it."""
        return self.program and bool(self.holds_secrets or self.holds_network)

    @property
    def grants(self) -> bool:
        return bool(self.widened or self.steps or self.new_code_holds)


@dataclass(frozen=True, kw_only=True)
class Plan:
    changes: tuple[Change, ...]
    schedules: tuple[ScheduleChange, ...]
    gates: tuple[Gate, ...]
    agents: tuple[AgentChange, ...] = ()

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action == action)

    @property
    def agents_changed(self) -> tuple[AgentChange, ...]:
        """Repo-local agents whose file was added, changed or removed, or whose program
        changed."""
        return tuple(a for a in self.agents if a.action != "unchanged" or a.program)

    @property
    def grants(self) -> tuple[AgentChange, ...]:
        """Agents through which the new bundle reaches further; empty when nothing widens."""
        return tuple(a for a in self.agents if a.grants)

    @property
    def narrowings(self) -> tuple[AgentChange, ...]:
        return tuple(a for a in self.agents if a.narrowed)


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


def _reach(old: Agent | None, new: Agent | None) -> list[Reach]:
    """How an agent's secrets, network and risk differ between two versions of it."""
    out: list[Reach] = []
    before = set(old.secrets) if old else set()
    after = set(new.secrets) if new else set()
    out += [Reach(kind="secret", old=None, new=s, widens=True) for s in sorted(after - before)]
    out += [Reach(kind="secret", old=s, new=None, widens=False) for s in sorted(before - after)]
    net_old = None if old is None else ("on" if old.network else "off")
    net_new = None if new is None else ("on" if new.network else "off")
    if net_new == "on" and net_old != "on":
        out.append(Reach(kind="network", old=net_old, new=net_new, widens=True))
    elif net_old == "on" and net_new != "on":
        out.append(Reach(kind="network", old=net_old, new=net_new, widens=False))
    # `auto` is the default, so a new agent that never mentions risk still runs unattended:
    # that is shown like a gate being dropped. A removed agent gates nothing, so no change.
    if new is not None and new.risk == "auto" and (old is None or old.risk != "auto"):
        out.append(Reach(kind="risk", old=old.risk if old else None, new=new.risk, widens=True))
    elif old is not None and new is not None and old.risk == "auto" and new.risk != "auto":
        out.append(Reach(kind="risk", old=old.risk, new=new.risk, widens=False))
    return out


def _step_reach(new: Bundle, old: Bundle) -> dict[str, list[StepReach]]:
    """Steps reaching further than before, by the agent they run in `new`.

    A step that keeps its agent gains that agent's new secrets or network through the agent's
    own change, listed there; only a new step or a switch of agent is compared here. Losing an
    approval gate counts either way: dropped from the workflow or through the agent's risk.
    """
    found: dict[str, list[StepReach]] = {}
    for workflow in sorted(new.workflows.values(), key=lambda w: w.name):
        before: Workflow | None = old.workflows.get(workflow.name)
        old_steps = {s.id: s for s in before.steps} if before else {}
        for step in workflow.steps:
            agent = new.agents.get(step.agent)
            if agent is None:
                continue  # a valid bundle names only existing agents
            prior = old_steps.get(step.id)
            was = prior.agent if prior else None
            secrets: tuple[str, ...] = ()
            network = False
            if was != step.agent:
                had = old.agents.get(was) if was else None
                secrets = tuple(sorted(set(agent.secrets) - set(had.secrets if had else ())))
                network = agent.network and not (had is not None and had.network)
            ungated = prior is not None and prior.approval is not None and step.approval is None
            weakened = _weaker_gate(prior.approval if prior else None, step.approval)
            if secrets or network or ungated or weakened:
                found.setdefault(step.agent, []).append(
                    StepReach(
                        workflow=workflow.name,
                        step=step.id,
                        was=was,
                        secrets=secrets,
                        network=network,
                        ungated=ungated,
                        weakened=weakened,
                    )
                )
    return found


def _seconds(value: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{unit}"
    return f"{value:g}s"


def _weaker_gate(old: ApprovalPolicy | None, new: ApprovalPolicy | None) -> tuple[str, ...]:
    """How gate `new` asks less than `old` (or, for a new gate, what lets it open by itself)."""
    if new is None:
        return ()
    found = []
    if old is not None:
        if new.required < old.required:
            found.append(f"approvals required: {old.required} → {new.required}")
        if old.approvers and not new.approvers:
            found.append("approvers: the listed ones → anyone with write access")
        added = sorted(set(new.approvers) - set(old.approvers)) if old.approvers else []
        if added:
            found.append("approvers added: " + ", ".join(added))
        if new.allow_author and not old.allow_author:
            found.append("the change's authors may now approve it")
    self_opening = new.on_timeout == "approve" and new.timeout is not None
    was_self_opening = (
        old is not None
        and old.on_timeout == "approve"
        and old.timeout is not None
        and new.timeout is not None
        and old.timeout <= new.timeout
    )
    if self_opening and not was_self_opening:
        assert new.timeout is not None
        found.append(f"approves itself after {_seconds(new.timeout)} (on_timeout: approve)")
    return tuple(found)


def _agent_changes(
    new: Bundle, old: Bundle, programs: Mapping[str, tuple[str, ...]]
) -> list[AgentChange]:
    local_new = {n: a for n, a in new.agents.items() if not a.builtin}
    local_old = {n: a for n, a in old.agents.items() if not a.builtin}
    steps = _step_reach(new, old)
    out = []
    for name in sorted(local_new.keys() | local_old.keys() | steps.keys()):
        program = name in programs and name in local_new
        after, before = local_new.get(name), local_old.get(name)
        reach = _reach(before, after) if after or before else []
        if after is None and before is None:
            action: Action = "unchanged"  # a built-in, here only because steps now run it
        elif before is None:
            action = "added"
        elif after is None:
            action = "removed"
        else:
            action = "unchanged" if after.digest == before.digest else "changed"
        shown = after or before
        if action == "unchanged" and not reach and name not in steps and not program:
            continue
        out.append(
            AgentChange(
                name=name,
                file=shown.source if shown else "",
                action=action,
                builtin=shown is None,
                widened=tuple(r for r in reach if r.widens),
                narrowed=tuple(r for r in reach if not r.widens),
                steps=tuple(steps.get(name, ())),
                program=program,
                program_files=tuple(programs.get(name, ())) if program else (),
                holds_secrets=tuple(sorted(after.secrets)) if program and after else (),
                holds_network=bool(program and after and after.network),
            )
        )
    return out


def make_plan(
    new: Bundle,
    old: Bundle,
    *,
    now: datetime,
    fires: int = 3,
    programs: Mapping[str, tuple[str, ...]] | None = None,
) -> Plan:
    """Changes from `old` to `new`; added and kept schedules with their next `fires` times.
    `programs` maps the repo-local agents whose program files changed (beside agent.yaml) to
    those files."""
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
    return Plan(
        changes=tuple(changes),
        schedules=tuple(schedules),
        gates=tuple(gates),
        agents=tuple(_agent_changes(new, old, programs or {})),
    )
