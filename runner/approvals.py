"""Approval gates: the one policy function every channel (CLI, API, PR comments) goes through.

A decision counts only if the person passes the step's policy: listed as a user or a member of a
listed team (or, with no list, has write access), and is not one of the run's authors unless
`allow_author`. The authors are whoever started the run, the pull request's author, and whoever
pushed the head the gate is for (recorded from the forge's deliveries, and, through a comment,
the head commit's accounts as the forge reports them). A decision is bound to the sha, revision
and inputs digest the gate was opened for; a comment must have been written after the gate
opened, and decides a gate once. `required` distinct approvers close the gate; one rejection
closes it as rejected. Every decision is recorded with who, when, the channel and the comment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from runner import metrics
from runner.errors import PermanentError
from runner.model import FINISHED, Approval, ApprovalPolicy, Decision, Run
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


def check_policy(
    policy: ApprovalPolicy, who: Identity, *, authors: Mapping[str, str] | None = None
) -> str | None:
    """Why `who` may not decide under `policy`, or None when they may. `authors` maps each
    author's name to how they are one; names compare without case, as forges treat logins."""
    name = who.name.casefold()
    by_name = {a.casefold(): why for a, why in (authors or {}).items() if a}
    if not policy.allow_author and name in by_name:
        return (
            f"{who.name} is an author of this change ({by_name[name]}), and the policy does not"
            " allow authors to approve"
        )
    if not policy.approvers:
        return None if who.can_write else f"{who.name} has no write access to the repository"
    users = {a.casefold() for a in policy.approvers if not a.startswith("@")}
    teams = {a[1:].casefold() for a in policy.approvers if a.startswith("@")}
    if name in users or {t.casefold() for t in who.teams} & teams:
        return None
    return f"{who.name} is not among the approvers ({', '.join(policy.approvers)})"


@dataclass(frozen=True, kw_only=True)
class Outcome:
    approval: Approval
    status: Literal["approved", "rejected", "pending"]
    approvals: int
    message: str


@dataclass(frozen=True, kw_only=True)
class Channel:
    """Where a decision came from: the CLI or API (just `via`), or a forge comment, whose id
    decides a gate once and whose creation time must be after the gate opened."""

    via: Literal["cli", "api", "comment"]
    forge: str | None = None
    comment_id: str | None = None
    written_at: float | None = None
    url: str | None = None


async def authors_of(store: Store, run: Run | None, sha: str | None) -> dict[str, str]:
    """Who counts as an author of the change a gate is for, from what the runner recorded, and
    how: whoever started the run, the pull request's author, and whoever pushed commit `sha` to
    the repository (a push delivery, or a pull request opened or updated with it as head)."""
    if run is None:
        return {}
    trigger = run.trigger
    found: dict[str, str] = {}
    forge, repository = trigger.get("forge"), trigger.get("repository")
    if forge and repository and sha:  # whoever pushed that commit, before or after the PR
        for pusher in await store.pushers(str(forge), str(repository), sha):
            found[pusher] = f"pushed {sha[:12]}"
    author = str((trigger.get("pull_request") or {}).get("author") or "")
    if author:
        found[author] = "opened the pull request"
    actor = str(trigger.get("actor") or "")
    if actor:
        found[actor] = "started the run"
    return found


async def _refusal(
    store: Store,
    approval: Approval,
    who: Identity,
    channel: Channel,
    sha: str | None,
    authors: Iterable[str],
) -> str | None:
    """Why this decision may not be recorded, or None when it may."""
    if approval.status != "pending":
        closed = [d for d in await store.decisions(approval.id) if d.via == "cancel"]
        if closed:  # closed by `close_gates`: say why
            return f"approval {approval.id} is closed: {closed[0].comment}"
        return f"approval {approval.id} is already {approval.status}"
    if channel.via == "comment" and (
        channel.written_at is None or channel.written_at <= approval.requested_at
    ):
        return (
            f"this comment was written before approval {approval.id} was asked for: "
            "comment again to decide it"
        )
    if sha is not None and approval.sha is not None and sha != approval.sha:
        return (
            f"approval {approval.id} is for commit {approval.sha[:12]}, not {sha[:12]}: "
            "a new push needs a new approval"
        )
    run = await store.get_run(approval.run_id)
    if run is None or run.status in FINISHED:
        state = run.status if run is not None else "gone"
        return f"run {approval.run_id} is {state}: nothing waits for this decision"
    named = "as the forge says: opened the pull request or authored its head commit"
    everyone = {name: named for name in authors} | await authors_of(store, run, approval.sha)
    return check_policy(approval.policy, who, authors=everyone)


async def decide(
    store: Store,
    approval_id: int,
    *,
    who: Identity,
    decision: Literal["approve", "reject"],
    channel: Channel,
    comment: str = "",
    sha: str | None = None,
    authors: Iterable[str] = (),
    now: float | None = None,
) -> Outcome:
    """Record `who`'s decision if the policy allows it; close the gate when it is decided and
    hand the run back to the workers. Raises `NotAllowed` (nothing recorded) otherwise.

    `sha` is the pull request's head now (a comment); `authors` adds authors the caller knows of
    (a forge's answer about the pull request) to those the runner recorded."""
    now = time.time() if now is None else now
    approval = await store.get_approval(approval_id)
    if approval is None:
        raise NotAllowed(f"there is no approval {approval_id}")
    if approval.status == "pending" and approval.deadline is not None and approval.deadline <= now:
        await expire_due(store, now)  # too late: the gate's on_timeout decides instead
        raise NotAllowed(
            f"approval {approval_id} timed out; on_timeout ({approval.policy.on_timeout}) applies"
        )
    problem = await _refusal(store, approval, who, channel, sha, authors)
    if problem:
        log.warning("refused %s of approval %d: %s", decision, approval_id, problem)
        metrics.DECISIONS.labels(channel.via, "refused").inc()
        raise NotAllowed(problem)
    recorded = await store.add_decision(
        Decision(
            approval_id=approval.id,
            actor=who.name,
            decision=decision,
            via=channel.via,
            sha=approval.sha,
            revision=approval.revision,
            inputs_digest=approval.inputs_digest,
            comment=comment,
            url=channel.url,
            forge=channel.forge,
            comment_id=channel.comment_id,
        )
    )
    if recorded is None:
        current = await store.get_approval(approval_id)
        state = current.status if current is not None else "gone"
        raise NotAllowed(f"approval {approval_id} is {state}, or this comment decided it already")
    metrics.DECISIONS.labels(channel.via, "recorded").inc()
    if decision == "reject":
        return await _close(store, approval, "rejected", 0, f"rejected by {who.name}")
    # one person is one approver, whatever the case their name was written in
    approvers = {
        d.actor.casefold() for d in await store.decisions(approval.id) if d.decision == "approve"
    }
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
            closed = await store.expire_approval(
                approval.id,
                Decision(
                    approval_id=approval.id,
                    actor="runner",
                    decision="approve" if approval.policy.on_timeout == "approve" else "reject",
                    via="timeout",
                    sha=approval.sha,
                    revision=approval.revision,
                    inputs_digest=approval.inputs_digest,
                    comment=f"timed out; on_timeout: {approval.policy.on_timeout}",
                ),
            )
            if closed is not None:
                metrics.DECISIONS.labels("timeout", "recorded").inc()
                await store.transition_run(approval.run_id, "running")
                expired.append(closed)
    return expired


async def close_gates(store: Store, run_id: int, why: str) -> list[Approval]:
    """Reject the pending gates of a run that ended without them (cancelled, superseded, timed
    out): nothing may approve them later, and a retry opens fresh ones."""
    closed = []
    for gate in await store.list_approvals(run_id=run_id, status="pending"):
        recorded = await store.add_decision(
            Decision(
                approval_id=gate.id,
                actor="runner",
                decision="reject",
                via="cancel",
                sha=gate.sha,
                revision=gate.revision,
                inputs_digest=gate.inputs_digest,
                comment=why,
            )
        )
        if recorded is not None:
            done = await store.close_approval(gate.id, "rejected")
            if done is not None:
                metrics.DECISIONS.labels("cancel", "recorded").inc()
                closed.append(done)
    return closed
