"""Approval gates: the one policy function every channel (CLI, API, PR comments) goes through.

A decision counts only if the person passes the step's policy: listed as a user or a member of a
listed team (or, with no list, has write access), and is not the run's author unless
`allow_author`. It is bound to the sha, revision and inputs digest the gate was opened for.
`required` distinct approvers close the gate; one rejection closes it as rejected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from runner.errors import PermanentError
from runner.model import Approval, ApprovalPolicy, Decision
from runner.store.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Identity:
    """Who decides: their name, teams (`org/team`) and whether they may write to the repo."""

    name: str
    teams: frozenset[str] = field(default_factory=frozenset)
    can_write: bool = False


class Directory(Protocol):
    async def identity(self, user: str) -> Identity:
        """Teams and write access of a user (a forge's API, or local configuration)."""


class LocalDirectory:
    """For the CLI: whoever can open the database has write access; teams from configuration."""

    def __init__(self, teams: Mapping[str, list[str]] | None = None) -> None:
        self.teams = {
            user: frozenset(t.lstrip("@") for t in ts) for user, ts in (teams or {}).items()
        }

    async def identity(self, user: str) -> Identity:
        return Identity(name=user, teams=self.teams.get(user, frozenset()), can_write=True)


class NotAllowed(PermanentError):
    """This person may not decide this approval (HTTP 403; a reply on the PR)."""


def check_policy(policy: ApprovalPolicy, who: Identity, *, author: str | None) -> str | None:
    """Why `who` may not decide under `policy`, or None when they may."""
    if author and who.name == author and not policy.allow_author:
        return f"{who.name} started this run, and the policy does not allow its author to approve"
    if not policy.approvers:
        return None if who.can_write else f"{who.name} has no write access to the repository"
    users = {a for a in policy.approvers if not a.startswith("@")}
    teams = {a[1:] for a in policy.approvers if a.startswith("@")}
    if who.name in users or who.teams & teams:
        return None
    return f"{who.name} is not among the approvers ({', '.join(policy.approvers)})"


@dataclass(frozen=True, kw_only=True)
class Outcome:
    approval: Approval
    status: Literal["approved", "rejected", "pending"]
    approvals: int
    message: str


async def decide(
    store: Store,
    approval_id: int,
    *,
    who: Identity,
    decision: Literal["approve", "reject"],
    via: Literal["cli", "api", "comment"],
    comment: str = "",
    url: str | None = None,
    sha: str | None = None,
    now: float | None = None,
) -> Outcome:
    """Record `who`'s decision if the policy allows it; close the gate when it is decided and
    hand the run back to the workers. Raises `NotAllowed` (nothing recorded) otherwise."""
    now = time.time() if now is None else now
    approval = await store.get_approval(approval_id)
    if approval is None:
        raise NotAllowed(f"there is no approval {approval_id}")
    if approval.status == "pending" and approval.deadline is not None and approval.deadline <= now:
        await expire_due(store, now)  # too late: the gate's on_timeout decides instead
        raise NotAllowed(
            f"approval {approval_id} timed out; on_timeout ({approval.policy.on_timeout}) applies"
        )
    if approval.status != "pending":
        raise NotAllowed(f"approval {approval_id} is already {approval.status}")
    run = await store.get_run(approval.run_id)
    author = str(run.trigger.get("actor") or "") if run else ""
    if sha is not None and approval.sha is not None and sha != approval.sha:
        raise NotAllowed(
            f"approval {approval_id} is for commit {approval.sha[:12]}, not {sha[:12]}: "
            "a new push needs a new approval"
        )
    problem = check_policy(approval.policy, who, author=author or None)
    if problem:
        log.warning("refused %s of approval %d: %s", decision, approval_id, problem)
        raise NotAllowed(problem)
    await store.add_decision(
        Decision(
            approval_id=approval.id,
            actor=who.name,
            decision=decision,
            via=via,
            sha=approval.sha,
            revision=approval.revision,
            inputs_digest=approval.inputs_digest,
            comment=comment,
            url=url,
        )
    )
    if decision == "reject":
        return await _close(store, approval, "rejected", 0, f"rejected by {who.name}")
    approvers = {d.actor for d in await store.decisions(approval.id) if d.decision == "approve"}
    if len(approvers) >= approval.policy.required:
        return await _close(store, approval, "approved", len(approvers), "approved")
    message = f"{len(approvers)} of {approval.policy.required} approvals"
    return Outcome(approval=approval, status="pending", approvals=len(approvers), message=message)


async def _close(
    store: Store,
    approval: Approval,
    status: Literal["approved", "rejected"],
    count: int,
    message: str,
) -> Outcome:
    closed = await store.close_approval(approval.id, status) or approval
    await store.transition_run(approval.run_id, "running")  # a worker (or the CLI) continues it
    return Outcome(approval=closed, status=status, approvals=count, message=message)


async def expire_due(store: Store, now: float) -> list[Approval]:
    """Close pending approvals past their deadline; the engine then applies `on_timeout`."""
    expired = []
    for approval in await store.list_approvals(status="pending"):
        if approval.deadline is not None and approval.deadline <= now:
            closed = await store.close_approval(approval.id, "expired")
            if closed is not None:
                await store.add_decision(
                    Decision(
                        approval_id=approval.id,
                        actor="runner",
                        decision="approve" if approval.policy.on_timeout == "approve" else "reject",
                        via="timeout",
                        sha=approval.sha,
                        revision=approval.revision,
                        inputs_digest=approval.inputs_digest,
                        comment=f"timed out; on_timeout: {approval.policy.on_timeout}",
                    )
                )
                await store.transition_run(approval.run_id, "running")
                expired.append(closed)
    return expired
