"""From stored forge events to work: runs of the workflows whose triggers match, and a nudge
to the reconciler when the push is to the workflows repo's branch.

Runs after the delivery was answered, from the store, so a crash between the two loses
nothing: an event stays pending until it is handled (its lease lets another node take it
over). A run is requested once per workflow per delivery (the idempotency key).

A failure is transient or permanent. A passing one (the store or a forge API unreachable, a
forge's 5xx or rate limit: `TransientError`, a transport error) leaves the event pending with
its attempts counted and a time before which no node takes it again, doubling from
`Retries.backoff` up to `Retries.max_backoff`; after `Retries.max_attempts` attempts it is failed,
saying so. A permanent one (a payload that is not JSON or lacks a field the runner reads, any
`PermanentError`, or an error nothing classifies) fails the event at once with the reason.
Either way the event's `error` says why, the log says it, and `runner_events_total{result}`
counts it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from runner import logs, metrics, tracing
from runner.comments import CommentHandler
from runner.errors import RunnerError, TransientError
from runner.forges.api import ForgeClient
from runner.forges.events import ForgeEvent, parse
from runner.forges.payloads import load_object
from runner.model import Bundle, Event, RunRequest
from runner.prcheck import PullRequestCheck
from runner.revisions import BundleLoader
from runner.store.base import Store
from runner.triggers import matches

log = logging.getLogger(__name__)
# pull request actions whose sender pushed the head they name (GitLab's `update` counts only
# with `oldrev`, which events.py maps to synchronize; a reopen pushes nothing)
PUSHED_HEAD = frozenset({"opened", "synchronize"})


def same_repository(url: str, event: ForgeEvent) -> bool:
    """Whether a source URL names the repository an event comes from."""

    def norm(text: str) -> str:
        text = re.sub(r"^[a-z+]+://([^@/]*@)?", "", text.strip().lower())
        text = re.sub(r"^[^@/]+@([^:]+):", r"\1/", text)  # scp-like git@host:owner/repo
        return text.removesuffix("/").removesuffix(".git")

    target = norm(url)
    return target == norm(event.clone_url) or (
        bool(event.repository) and target.endswith("/" + event.repository.lower())
    )


Outcome = Literal["done", "retry", "failed", "gave_up"]


@dataclass(frozen=True, kw_only=True)
class Retries:
    """How a stored event is retried after a passing failure (the `events:` settings)."""

    max_attempts: int = 10
    backoff: float = 5.0  # before the second attempt; doubled each time after
    max_backoff: float = 600.0

    def delay(self, attempts: int) -> float:
        """Seconds before attempt `attempts + 1`, with a little jitter (never above the cap)."""
        base = min(self.backoff * 2.0 ** max(attempts - 1, 0), self.max_backoff)
        return float(base * random.uniform(0.8, 1.0))


def transient(exc: BaseException) -> bool:
    """Whether trying again later may well succeed: the store, a forge or the network away."""
    return isinstance(
        exc, TransientError | OSError | httpx.TransportError | sqlite3.OperationalError
    )


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _traced(trigger: dict[str, Any]) -> dict[str, Any]:
    """The run continues the delivery's trace (when tracing is on)."""
    parent = tracing.traceparent()
    return {**trigger, "traceparent": parent} if parent else trigger


class Dispatcher:
    def __init__(
        self,
        store: Store,
        loader: BundleLoader,
        *,
        kinds: Mapping[str, str],
        sources: Mapping[str, tuple[str, str]],
        nudge_source: Callable[[str], None] = lambda name: None,
        nudge_workers: Callable[[], None] = lambda: None,
        comments: CommentHandler | None = None,
        prcheck: PullRequestCheck | None = None,
        clients: Mapping[str, ForgeClient] | None = None,
        retries: Retries | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.retries = retries or Retries()
        self.clock = clock
        self.clients = dict(clients or {})
        self.comments = comments
        self.prcheck = prcheck
        self.store = store
        self.loader = loader
        self.kinds = dict(kinds)  # forge name -> github | gitlab | gitea
        self.sources = dict(sources)  # source name -> (url, branch)
        self.nudge_source = nudge_source
        self.nudge_workers = nudge_workers
        self.wake = asyncio.Event()

    async def handle(self, event: Event) -> list[int]:
        """Act on one stored event; the ids of the runs it requested."""
        if event.forge == "runner" and event.event_type == "reconcile":  # asked through the API
            name = str(load_object(event.body).get("source", ""))
            log.info("reconcile of %s requested: reconciling now", name)
            self.nudge_source(name)
            return []
        kind = self.kinds.get(event.forge)
        if kind is None:
            return []  # generic deliveries request their run when they are received
        # checked by the receiver already; again here for events stored by an older runner:
        # `BadPayload` (permanent) says which field is wrong
        forge_event = parse(kind, event.forge, event.event_type, load_object(event.body))
        if forge_event is None:
            return []
        pushed = forge_event.kind == "push" or (
            forge_event.kind == "pull_request" and forge_event.action in PUSHED_HEAD
        )
        if pushed and forge_event.sha:
            # who pushed a commit counts as an author of any pull request it heads
            await self.store.record_push(
                forge_event.forge,
                forge_event.repository,
                forge_event.number or 0,
                forge_event.sha,
                forge_event.actor,
            )
        new_head = forge_event.kind == "pull_request" and forge_event.action == "synchronize"
        if new_head and self.comments is not None:
            await self.comments.superseded(forge_event)
        if forge_event.kind == "comment":
            if self.comments is not None:
                await self.comments.handle(forge_event, event.id)
                self.nudge_workers()  # an approval may have put a run back to work
            return []
        for name, (url, branch) in self.sources.items():
            if (
                forge_event.kind == "push"
                and forge_event.branch == branch
                and same_repository(url, forge_event)
            ):
                log.info("push to the workflows repo %s: reconciling now", name)
                self.nudge_source(name)
            if (
                forge_event.kind == "pull_request"
                and self.prcheck is not None
                and name in self.prcheck.sources
                and same_repository(url, forge_event)
            ):
                try:
                    await self.prcheck.handle(forge_event, name)
                except Exception as exc:  # the PR's own runs are requested all the same
                    log.warning(
                        "validating %s#%s: %s", forge_event.repository, forge_event.number, exc
                    )
        applied = []
        for status in await self.store.list_source_statuses():
            if status.applied_revision:
                bundle = await self.loader.bundle(status.name, status.applied_revision)
                applied.append((status.name, status.applied_revision, bundle))
        forge_event = await self._with_pull_files(forge_event, [b for _, _, b in applied])
        runs = []
        for source, revision, bundle in applied:
            for workflow in bundle.workflows.values():
                if not matches(workflow, forge_event):
                    continue
                run, _ = await self.store.request_run(
                    RunRequest(
                        workflow=workflow.name,
                        source=source,
                        revision=revision,
                        idempotency_key=f"{event.forge}:{event.delivery_id}:{source}:{workflow.name}",
                        trigger=_traced(forge_event.trigger(event.event_type)),
                        concurrency_group=None,
                    )
                )
                runs.append(run.id)
        if runs:
            self.nudge_workers()
        return runs

    async def _with_pull_files(self, event: ForgeEvent, bundles: list[Bundle]) -> ForgeEvent:
        """A pull request's changed files, asked of the forge when a `pull_request` trigger
        filters on paths (the payload does not list them). Without an answer the filters match,
        as when the forge has no API token."""
        client = self.clients.get(event.forge)
        if event.kind != "pull_request" or event.changed_files is not None or client is None:
            return event
        filtered = any(
            trigger.kind == "pull_request"
            and ("paths" in trigger.config or "paths_ignore" in trigger.config)
            for bundle in bundles
            for workflow in bundle.workflows.values()
            for trigger in workflow.triggers
        )
        if not filtered or not event.number:
            return event
        try:
            files = await client.changed_files(event.repository, event.number)
        except Exception as exc:  # a forge outage must not drop the pull request's runs
            log.warning(
                "files of %s#%s: %s; path filters match", event.repository, event.number, exc
            )
            return event
        return replace(event, changed_files=files)

    async def dispatch(self, event: Event) -> Outcome:
        """Handle one claimed event and record the outcome on it (done, pending again with a
        time for the next attempt, or failed with the reason)."""
        try:
            with (
                logs.context(delivery=event.delivery_id, forge=event.forge),
                tracing.span(
                    "dispatch event",
                    parent=event.headers.get("traceparent"),
                    forge=event.forge,
                    event=event.event_type,
                    delivery=event.delivery_id,
                ),
            ):
                await self.handle(event)
        except Exception as exc:  # one bad event never stops the others
            result: Outcome = await self._failed(event, exc)
        else:
            await self.store.finish_event(event.id)
            result = "done"
        metrics.event_handled(result)
        return result

    async def _failed(self, event: Event, exc: Exception) -> Outcome:
        what = f"event {event.id} ({event.forge} {event.event_type}, delivery {event.delivery_id})"
        reason = str(exc) or type(exc).__name__
        if not transient(exc):
            if not isinstance(exc, RunnerError):  # nothing expected it: a bug worth a trace
                log.error("%s failed: %s", what, reason, exc_info=exc)
                reason = f"unexpected {type(exc).__name__}: {reason}"
            else:
                log.warning("%s failed: %s", what, reason)
            await self.store.finish_event(event.id, error=reason)
            return "failed"
        most = self.retries.max_attempts
        if event.attempts >= most:
            log.warning("%s failed: gave up after %d attempts: %s", what, event.attempts, reason)
            await self.store.finish_event(
                event.id, error=f"gave up after {event.attempts} attempts: {reason}"
            )
            return "gave_up"
        after = self.clock() + self.retries.delay(event.attempts)
        error = (
            f"attempt {event.attempts} of {most} failed, will try again at {_when(after)}: {reason}"
        )
        log.warning("%s: %s", what, error)
        await self.store.retry_event(event.id, error=error, not_before=after)
        return "retry"

    async def run_forever(self, stop: asyncio.Event, node: str, *, poll: float = 2.0) -> None:
        while not stop.is_set():
            self.wake.clear()
            try:
                for event in await self.store.claim_events(node, 60.0, 20):
                    await self.dispatch(event)
            except Exception as exc:  # the store away: the leases let the events wait
                log.warning("event loop: %s", exc)
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
            await asyncio.wait(waits, timeout=poll, return_when="FIRST_COMPLETED")
            for waiter in waits:
                waiter.cancel()
