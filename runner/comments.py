"""Pull-request comment commands, acted on: `/approve` and `/reject` go through the engine's one
policy function with the commenter's identity as the forge knows it (teams, write access) and
the pull request's current head; `/retry`, `/cancel` and `/run` need write access. Every
command is answered on the pull request.

A comment acts only on runs triggered through the same configured forge and repository, and
at most once: the first stored delivery carrying it claims it by the forge's comment id, so the
same signed body re-sent under another delivery id does nothing. Its authors (the pull
request's, and the head commit's as the forge links them) join the run's recorded ones for the
author ban."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Literal

from runner import metrics
from runner.approvals import Channel, NotAllowed, decide
from runner.dag import control
from runner.errors import PermanentError, TransientError
from runner.forges.api import ForgeClient
from runner.forges.commands import HELP, Command, parse_comment
from runner.forges.events import ForgeEvent
from runner.model import Run, RunRequest
from runner.reporting import Reporter
from runner.revisions import BundleLoader
from runner.spec.inputs import InputsInvalid, resolve_inputs
from runner.store.base import Store

log = logging.getLogger(__name__)


def _pr_runs(runs: list[Run], event: ForgeEvent) -> list[Run]:
    """The runs of the event's pull request: same configured forge, repository and number."""
    return [
        r
        for r in runs
        if r.trigger.get("forge") == event.forge
        and r.trigger.get("repository") == event.repository
        and (r.trigger.get("pull_request") or {}).get("number") == event.number
    ]


class _Context:
    """What one comment's commands share: the pull request's head and author now, and the
    head commit's accounts, asked of the forge once and only when a decision needs them."""

    def __init__(self, *, head: str, author: str) -> None:
        self.head, self.author = head, author
        self._accounts: frozenset[str] | None = None

    async def authors(self, client: ForgeClient, repository: str) -> frozenset[str]:
        if self._accounts is None:
            self._accounts = await client.head_accounts(repository, self.head)
        return self._accounts | {self.author}


class CommentHandler:
    def __init__(
        self,
        store: Store,
        loader: BundleLoader,
        clients: Mapping[str, ForgeClient],
        *,
        reporter: Reporter | None = None,
    ) -> None:
        self.reporter = reporter  # a cancelled run's final status and comment
        self.store = store
        self.loader = loader
        self.clients = dict(clients)

    async def handle(self, event: ForgeEvent, event_id: int) -> list[str]:
        """Act on the commands of a new pull-request comment carried by stored event
        `event_id`; the reply posted (as lines)."""
        commands, errors = parse_comment(event.comment or "")
        if not commands and not errors:
            return []
        client = self.clients.get(event.forge)
        if client is None:
            log.warning(
                "comment on %s#%s: forge %s has no API token, commands ignored",
                event.repository,
                event.number,
                event.forge,
            )
            metrics.comment_command(event.forge, "no_token")
            return []
        if event.comment_id is None:
            log.warning(
                "comment on %s#%s names no comment id: commands ignored",
                event.repository,
                event.number,
            )
            metrics.comment_command(event.forge, "no_id")
            return []
        if event.actor and event.actor == await client.me():
            return []  # the runner's own reply (its token's user) is never a command
        # asked before the comment is claimed: a forge that cannot answer now leaves the
        # comment unspent, for the forge's redelivery
        head, author = await client.pull_head(event.repository, event.number or 0)
        if not await self.store.claim_comment(
            event.forge,
            event.comment_id,
            event_id=event_id,
            repository=event.repository,
            number=event.number or 0,
            actor=event.actor,
        ):
            log.warning(
                "comment %s on %s#%s was acted on already (the same comment in another"
                " delivery): ignored",
                event.comment_id,
                event.repository,
                event.number,
            )
            metrics.comment_command(event.forge, "replayed")
            return []
        metrics.comment_command(event.forge, "acted")
        runs = _pr_runs(await self.store.list_runs(limit=1000), event)
        replies = [f"@{event.actor}: {e}" for e in errors]
        context = _Context(head=head, author=author)
        for command in commands:
            replies += await self._one(command, event, client, context, runs)
        if replies:
            await client.comment(event.repository, event.number or 0, "\n".join(replies))
        return replies

    async def superseded(self, event: ForgeEvent) -> list[int]:
        """A new push to a pull request (`synchronize`): runs of the old head that wait for an
        approval are cancelled (the approval was for other code) and the PR is told."""
        cancelled = []
        for run in _pr_runs(
            await self.store.list_runs(status=["waiting_approval"], limit=1000), event
        ):
            if run.trigger.get("sha") == event.sha:
                continue
            try:
                await control.cancel(
                    self.store,
                    run.id,
                    reason=f"superseded by a push of {event.sha[:12]}",
                    reporter=self.reporter,
                )
            except PermanentError:
                continue
            cancelled.append(run.id)
        client = self.clients.get(event.forge)
        if cancelled and client is not None:
            listed = ", ".join(str(i) for i in cancelled)
            await client.comment(
                event.repository,
                event.number or 0,
                f"The push of {event.sha[:12]} voids the pending approvals of run(s) {listed}"
                " (they were for the previous head); the new head gets a run of its own.",
            )
        return cancelled

    async def _one(
        self,
        command: Command,
        event: ForgeEvent,
        client: ForgeClient,
        context: _Context,
        runs: list[Run],
    ) -> list[str]:
        if command.verb == "help":
            return [HELP]
        targets = [r for r in runs if command.run is None or r.id == command.run]
        if command.verb in ("approve", "reject"):
            return await self._decide(command, event, client, context, targets)
        who = await client.identity(event.repository, event.actor, [])
        if not who.can_write:
            return [f"@{event.actor}: /{command.verb} needs write access to {event.repository}"]
        if command.verb == "run":
            return [await self._run(command, event, context)]
        replies = []
        for run in targets:
            try:
                if command.verb == "cancel":
                    await control.cancel(
                        self.store,
                        run.id,
                        reason=f"cancelled by @{event.actor} ({event.comment_url})",
                        reporter=self.reporter,
                    )
                else:
                    await control.retry(self.store, run.id)
                replies.append(f"run {run.id}: {command.verb} done (@{event.actor})")
            except PermanentError as exc:
                replies.append(f"run {run.id}: {exc}")
        return replies or [f"@{event.actor}: no run of this pull request matches /{command.verb}"]

    async def _decide(
        self,
        command: Command,
        event: ForgeEvent,
        client: ForgeClient,
        context: _Context,
        targets: list[Run],
    ) -> list[str]:
        decision: Literal["approve", "reject"] = (
            "approve" if command.verb == "approve" else "reject"
        )
        channel = Channel(
            via="comment",
            forge=event.forge,
            comment_id=event.comment_id,
            written_at=event.comment_at,
            url=event.comment_url,
        )
        replies = []
        for run in targets:
            for gate in await self.store.list_approvals(run_id=run.id, status="pending"):
                if command.step is not None and gate.step_id != command.step:
                    continue
                teams = [a[1:] for a in gate.policy.approvers if a.startswith("@")]
                who = await client.identity(event.repository, event.actor, teams)
                try:
                    authors = await context.authors(client, event.repository)
                except TransientError as exc:
                    replies.append(
                        f"@{event.actor}: not counted for run {run.id} step `{gate.step_id}`:"
                        f" cannot tell who pushed {context.head[:12]} ({exc}); comment again"
                    )
                    continue
                try:
                    outcome = await decide(
                        self.store,
                        gate.id,
                        who=who,
                        decision=decision,
                        channel=channel,
                        comment=command.reason or command.line,
                        sha=context.head,
                        authors=authors,
                    )
                except NotAllowed as exc:
                    replies.append(
                        f"@{event.actor}: not counted for run {run.id} step `{gate.step_id}`: {exc}"
                    )
                    continue
                replies.append(
                    f"run {run.id} step `{gate.step_id}`: {outcome.message} (@{event.actor})"
                )
        if not replies:  # say why, when a gate was closed by a cancel
            replies = [
                f"@{event.actor}: run {run.id} was cancelled ({run.error}): nothing waits for"
                " approval"
                for run in targets
                if run.status == "cancelled" and (command.run is not None or len(targets) == 1)
            ]
        return replies or [f"@{event.actor}: nothing of this pull request waits for approval"]

    async def _run(self, command: Command, event: ForgeEvent, context: _Context) -> str:
        head = context.head
        for status in await self.store.list_source_statuses():
            if not status.applied_revision:
                continue
            bundle = await self.loader.bundle(status.name, status.applied_revision)
            workflow = bundle.workflows.get(command.workflow or "")
            if workflow is None or not any(t.kind == "pull_request" for t in workflow.triggers):
                continue
            try:
                inputs = resolve_inputs(workflow.inputs, dict(command.inputs))
            except InputsInvalid as exc:
                return f"@{event.actor}: {exc}"
            trigger = {
                "event": "pull_request",
                "forge": event.forge,
                "repository": event.repository,
                "sha": head,
                "actor": event.actor,
                "clone_url": event.clone_url,
                "pull_request": {
                    "number": event.number,
                    "action": "comment",
                    "author": context.author,
                },
            }
            run, _ = await self.store.request_run(
                RunRequest(
                    workflow=workflow.name,
                    source=status.name,
                    revision=status.applied_revision,
                    idempotency_key=f"comment:{event.forge}:{event.comment_id}:{workflow.name}",
                    trigger=trigger,
                    inputs=inputs,
                )
            )
            return f"run {run.id} of `{workflow.name}` requested for {head[:12]} (@{event.actor})"
        return (
            f"@{event.actor}: no applied workflow {command.workflow!r} has a pull_request trigger"
        )
