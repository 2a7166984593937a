"""The reconciler: converge the store on what a source's branch holds, never on a broken tree.

One pass: fetch -> compare -> the files changed since the revision compiled last (a tree diff)
-> compile them into the kept whole (every rule still holds for the whole revision) -> apply in
one transaction, written as its changes against the revision this reconciler applied last ->
sync schedules -> write status (once, at the end). The first pass (or one whose source cannot
tell what changed) lists and compiles everything. An invalid revision is recorded as attempted
with every error, and the last applied revision stays in force: its workflows keep running and
its schedules keep firing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from runner import logs, metrics, tracing
from runner.errors import PermanentError, TransientError
from runner.executors.images import ImagePolicy
from runner.model import Bundle, Condition, SourceStatus
from runner.revisions import BundleLoader
from runner.secrets.grants import AgentPolicy
from runner.spec.compile import Compiler, Result, SourceFile
from runner.spec.repo import builtin_agents
from runner.store.base import Store

log = logging.getLogger(__name__)


class Source(Protocol):
    name: str
    interval: float

    async def fetch(self, deadline: float = 60.0) -> str:
        """Bring the source up to date; the revision it is at."""

    async def files(self, revision: str, known: Callable[[str, str], bool]) -> list[SourceFile]:
        """The documents of `revision`; a file `known(path, key)` may be listed without data."""

    async def changes(self, since: str, revision: str) -> Changes | None:
        """(the documents that differ from `since` to `revision`, read; the paths removed), or
        None when the source cannot tell (the caller lists `revision` in full)."""

    def agents_root(self, revision: str) -> Path:
        """A folder holding `agents/` as of `revision`."""

    def rewritten(self, old: str, new: str) -> bool:
        """Whether history was rewritten between the two revisions."""


Changes = tuple[list[SourceFile], list[str]]


@dataclass
class Compiled:
    """What a reconciler keeps between passes: a compiler holding `revision`, and `base`, the
    revision its documents were last stored as (the next revision is written against it)."""

    compiler: Compiler
    revision: str
    base: str | None = None


@dataclass(frozen=True, kw_only=True)
class Pass:
    source: str
    revision: str | None
    applied: bool
    changed: bool
    errors: int
    duration: float


Sync = Callable[[str, str, Bundle, bool], Awaitable[object]]


class Reconciler:
    def __init__(
        self,
        store: Store,
        source: Source,
        *,
        sync: Sync | None = None,
        fetch_deadline: float = 60.0,
        clock: Callable[[], float] = time.time,
        images: ImagePolicy | None = None,
        policy: AgentPolicy | None = None,
    ) -> None:
        self.images = images
        self.policy = policy
        self.store = store
        self.source = source
        self.sync = sync
        self.fetch_deadline = fetch_deadline
        self.clock = clock
        self.compiled: Compiled | None = None
        self.nudged = asyncio.Event()
        self.started = False
        self.synced: str | None = None  # the revision whose schedules were last synced

    def nudge(self) -> None:
        """Reconcile as soon as possible (nudges during a pass are coalesced into one)."""
        self.nudged.set()

    async def reconcile(self) -> Pass:
        """One pass, timed and counted (`runner_reconcile_*`) and traced."""
        name = self.source.name
        begun = time.monotonic()
        outcome = "error"
        with logs.context(source=name), tracing.span("reconcile", source=name):
            try:
                result = await self._reconcile()
            except (TransientError, PermanentError):
                outcome = "fetch_failed"
                raise
            else:
                outcome = (
                    "applied" if result.applied else "refused" if result.errors else "unchanged"
                )
                return result
            finally:
                metrics.RECONCILES.labels(name, outcome).inc()
                metrics.RECONCILE_DURATION.labels(name).observe(time.monotonic() - begun)

    async def _reconcile(self) -> Pass:
        name = self.source.name
        begun = self.clock()
        previous = await self.store.get_source_status(name) or SourceStatus(name=name)
        try:
            revision = await self.source.fetch(self.fetch_deadline)
        except (TransientError, PermanentError) as exc:
            await self._status(
                previous,
                begun,
                ready=False,
                reason="FetchFailed",
                message=str(exc),
                stalled=isinstance(exc, PermanentError),
            )
            raise
        fetched = self.clock()
        applied = previous.applied_revision
        if applied and applied != self.synced and self.sync is not None:
            # schedules of what was applied before a restart, or by another process (another
            # replica, `runner reconcile`): this process's scheduler follows the store
            bundle = await self._bundle(applied)
            if bundle is not None:
                await self.sync(name, applied, bundle, not self.started)
                self.synced = applied
        self.started = True
        if revision == applied or (revision == previous.attempted_revision and previous.errors):
            await self._status(
                previous,
                begun,
                fetched=fetched,
                ready=revision == applied,
                reason="Unchanged" if revision == applied else previous_reason(previous),
                message=previous_message(previous),
            )
            return Pass(
                source=name,
                revision=revision,
                applied=False,
                changed=False,
                errors=len(previous.errors),
                duration=self.clock() - begun,
            )
        if applied and self.source.rewritten(applied, revision):
            log.warning(
                "source %s: history was rewritten (%s is not a descendant of %s)",
                name,
                revision[:12],
                applied[:12],
            )
        result = await self._compile(revision)
        if result.errors:
            errors = tuple(e.as_dict() for e in result.errors)
            status = SourceStatus(
                name=name,
                attempted_revision=revision,
                attempted_at=fetched,
                errors=errors,
            )
            kept = applied[:12] if applied else "nothing"
            message = f"revision {revision[:12]} has {len(errors)} error(s); {kept} stays applied"
            await self._status(
                status,
                begun,
                fetched=fetched,
                ready=False,
                reason="Invalid",
                message=message,
                stalled=True,
            )
            log.warning("source %s: %s", name, message)
            return Pass(
                source=name,
                revision=revision,
                applied=False,
                changed=True,
                errors=len(errors),
                duration=self.clock() - begun,
            )
        await self._apply(revision)
        if self.sync is not None:
            await self.sync(name, revision, result.bundle, False)
            self.synced = revision
        status = SourceStatus(name=name, attempted_revision=revision, attempted_at=fetched)
        await self._status(
            status,
            begun,
            fetched=fetched,
            ready=True,
            reason="Applied",
            message=f"revision {revision[:12]} applied: {len(result.bundle.workflows)} workflow(s)",
        )
        log.info("source %s: applied %s", name, revision[:12])
        return Pass(
            source=name,
            revision=revision,
            applied=True,
            changed=True,
            errors=0,
            duration=self.clock() - begun,
        )

    async def _bundle(self, revision: str) -> Bundle | None:
        loader = BundleLoader(
            self.store.revision_documents, builtin_agents(), lambda s, r: self.source.agents_root(r)
        )
        try:
            return await loader.bundle(self.source.name, revision)
        except PermanentError:
            return None

    async def _compile(self, revision: str) -> Result:
        """The whole outcome of `revision`, compiling only what changed since the kept one."""
        kept = self.compiled
        compiler = (
            kept.compiler
            if kept is not None
            else Compiler(
                builtin_agents(),
                self.images,
                self.policy.for_source(self.source.name) if self.policy else None,
            )
        )
        changes: Changes | None = None
        if kept is not None:
            same = kept.revision == revision
            changes = ([], []) if same else await self.source.changes(kept.revision, revision)
        files: list[SourceFile] = []
        if changes is None:
            files = await self.source.files(revision, compiler.knows)
        self.compiled = None  # an update cut short would leave it half-changed: start over then
        result = compiler.update(*changes) if changes is not None else compiler.sync(files)
        self.compiled = Compiled(compiler, revision, kept.base if kept is not None else None)
        return result

    async def _apply(self, revision: str) -> None:
        """Store `revision` as its changes against the revision applied last, or in full."""
        compiled = self.compiled
        assert compiled is not None
        assert compiled.revision == revision
        changed, removed = compiled.compiler.delta()
        if compiled.base is None or not await self.store.apply_changes(
            self.source.name, revision, parent=compiled.base, changed=changed, removed=removed
        ):
            await self.store.apply_revision(
                self.source.name, revision, compiled.compiler.documents()
            )
        compiled.compiler.mark()
        compiled.base = revision

    async def _status(
        self,
        status: SourceStatus,
        begun: float,
        *,
        fetched: float | None = None,
        ready: bool,
        reason: str,
        message: str = "",
        stalled: bool = False,
    ) -> None:
        now = self.clock()
        conditions = (
            Condition(type="Ready", status=ready, reason=reason, message=message, changed_at=now),
            Condition(type="Reconciling", status=False, reason=reason, changed_at=now),
            Condition(
                type="Stalled",
                status=stalled,
                reason=reason,
                message=message if stalled else "",
                changed_at=now,
            ),
        )
        await self.store.save_source_status(
            SourceStatus(
                name=status.name,
                attempted_revision=status.attempted_revision,
                attempted_at=status.attempted_at,
                errors=status.errors,
                conditions=conditions,
                last_fetch_at=fetched if fetched is not None else status.last_fetch_at,
                last_fetch_duration=(fetched - begun)
                if fetched is not None
                else status.last_fetch_duration,
            )
        )

    async def run_forever(self, stop: asyncio.Event, *, max_backoff: float = 300.0) -> None:
        """Reconcile every `interval` (with jitter), at once when nudged, backing off on errors."""
        failures = 0
        while not stop.is_set():
            self.nudged.clear()
            try:
                await self.reconcile()
                failures = 0
                wait = self.source.interval * random.uniform(0.9, 1.1)
            except Exception as exc:  # a loop never dies: log, count, back off
                failures += 1
                wait = min(
                    self.source.interval * 2 ** min(failures, 10), max_backoff
                ) * random.uniform(0.9, 1.1)
                log.warning(
                    "source %s: reconcile failed (%d in a row), next try in %.0fs: %s",
                    self.source.name,
                    failures,
                    wait,
                    exc,
                )
            stopped = asyncio.ensure_future(stop.wait())
            nudged = asyncio.ensure_future(self.nudged.wait())
            await asyncio.wait([stopped, nudged], timeout=wait, return_when="FIRST_COMPLETED")
            stopped.cancel()
            nudged.cancel()


def previous_reason(status: SourceStatus) -> str:
    ready = next((c for c in status.conditions if c.type == "Ready"), None)
    return ready.reason if ready else "Unchanged"


def previous_message(status: SourceStatus) -> str:
    ready = next((c for c in status.conditions if c.type == "Ready"), None)
    return ready.message if ready else ""
