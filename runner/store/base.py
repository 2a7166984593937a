"""The one interface to everything durable, and the registry of its backends.

Every contract below holds on every backend and with several processes (replicas) sharing one
database: correctness comes from constraints and transactions, never from timing. Times are Unix
epoch seconds (float). Methods raise `runner.errors.TransientError` when the database cannot be
reached after the backend's own retries, and never leave a change half-written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from runner.errors import UsageError
from runner.model import (
    Approval,
    Decision,
    Event,
    LogSlice,
    Run,
    RunRequest,
    RunStatus,
    SourceStatus,
    StepRun,
    StoredDocument,
)

DEFAULT_URL = "sqlite:///./runner.db"
LOG_LIMIT = 5 * 1024 * 1024
TRUNCATION_MARKER = b"\n[runner: log truncated at %d bytes; the rest was dropped]\n"


class Store(Protocol):
    """Sources, revisions, events, runs, steps, logs, approvals and leases."""

    # -- lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect. Does not migrate: call `migrate` (the service does at start)."""

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    async def migrate(self) -> list[str]:
        """Apply pending migrations in order; return the names applied (empty when current).

        Safe to run twice and from two processes at once: one applies, the other finds nothing
        left to do.
        """

    async def pending_migrations(self) -> list[str]:
        """Names of migrations not yet applied (readiness reports this)."""

    # -- sources and revisions ------------------------------------------------------------------
    async def save_source_status(self, status: SourceStatus) -> None:
        """Create or replace the status of one source."""

    async def get_source_status(self, name: str) -> SourceStatus | None:
        """The status of one source, or None if it was never saved."""

    async def list_source_statuses(self) -> list[SourceStatus]:
        """Every source's status, by name."""

    async def apply_revision(
        self, source: str, revision: str, documents: Sequence[StoredDocument]
    ) -> None:
        """Make `documents` the applied set of `source` at `revision`, in one transaction.

        Readers see either the previous revision's documents or all of these, never a mix.
        Documents of earlier revisions stay readable (runs are pinned to their revision).
        Applying the revision that is already applied changes nothing.
        """

    async def apply_changes(
        self,
        source: str,
        revision: str,
        *,
        parent: str,
        changed: Sequence[StoredDocument],
        removed: Sequence[tuple[str, str]],
    ) -> bool:
        """Apply `revision` given as a change to `parent`, a stored revision of `source`: its
        documents with `changed` put in by kind and name and the (kind, name) of `removed` taken
        out. The same outcome and guarantees as `apply_revision` with the whole list, at a cost
        that grows with the change, not with the number of documents.

        False, with nothing written, when `parent` is not stored (apply the whole list then).
        A `revision` that is stored already becomes the applied one; the changes are ignored.
        """

    async def applied_documents(self, source: str) -> tuple[str | None, list[StoredDocument]]:
        """(applied revision, its documents by kind and name); (None, []) before the first."""

    async def revision_documents(self, source: str, revision: str) -> list[StoredDocument]:
        """The documents a source had at an applied revision (what a pinned run runs)."""

    # -- inbound events -------------------------------------------------------------------------
    async def add_event(
        self,
        *,
        forge: str,
        delivery_id: str,
        event_type: str,
        headers: Mapping[str, str],
        body: bytes,
        body_digest: str | None = None,
    ) -> tuple[Event, bool]:
        """Store a delivery durably; (event, True) when new, (existing, False) for a duplicate
        (same forge and delivery id, or the same `body_digest`: a signed body re-sent under
        another delivery id), whoever stored it first. A duplicate of an event whose handling
        failed puts it back to pending and counts as new (a forge's redelivery)."""

    async def claim_events(self, node: str, lease: float, limit: int) -> list[Event]:
        """Lease up to `limit` pending events, oldest first, that no live lease holds and whose
        `not_before` has passed; each claim counts one attempt."""

    async def finish_event(self, event_id: int, *, error: str | None = None) -> None:
        """Mark an event done (or failed with `error`) and drop its lease."""

    async def retry_event(self, event_id: int, *, error: str, not_before: float) -> None:
        """Leave a pending event pending after a passing failure: record `error`, drop its
        lease, and let no one claim it before `not_before` (its attempts count on)."""

    # -- runs -----------------------------------------------------------------------------------
    async def request_run(self, request: RunRequest) -> tuple[Run, bool]:
        """Queue a run; (run, True) when created, (existing run, False) when a run with the
        same idempotency key exists already. Never two runs for one key."""

    async def get_run(self, run_id: int) -> Run | None:
        """One run, or None."""

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: Sequence[RunStatus] | None = None,
        since: float | None = None,
        before_id: int | None = None,
        group: str | None = None,
        limit: int = 50,
    ) -> list[Run]:
        """Runs, newest first, filtered (`group`: concurrency group); `before_id` pages (pass
        the last id of a page)."""

    async def transition_run(
        self,
        run_id: int,
        to: RunStatus,
        *,
        error: str | None = None,
        only_from: Sequence[RunStatus] | None = None,
        wait: Mapping[str, Any] | None = None,
    ) -> Run | None:
        """Move a run to `to` if `model.RUN_TRANSITIONS` allows it from its current status
        (and, with `only_from`, only from those statuses). The run's `wait` becomes `wait`
        (`model.run_wait`): a run that moves on waits for nothing unless told.

        Returns the updated run, or None when the transition is not allowed (the caller lost a
        race or the run is finished). Sets `started_at` on the first `running` and
        `finished_at` on a finished status; a finished or waiting run also loses its lease.
        """

    async def set_run_wait(self, run_id: int, wait: Mapping[str, Any] | None) -> Run | None:
        """Record what an unfinished run waits for (`model.run_wait`; None: nothing), its
        status unchanged; None when the run is finished or missing."""

    async def note_queued_waits(self, wait: Mapping[str, Any]) -> list[int]:
        """Give `wait` to every queued run that waits for nothing and that no live lease holds
        (runs no worker takes up for now, e.g. while the executor's circuit is open); their
        ids. Taking a run up (its next status change) clears it again."""

    async def cancelled_runs(self, run_ids: Sequence[int]) -> list[int]:
        """Which of these runs are cancelled now: one cheap query a node asks often about the
        runs it works on, so that a cancel made anywhere stops their steps at once."""

    async def count_runs(self, *, status: Sequence[RunStatus]) -> int:
        """How many runs are in these statuses (queue depth, waiting approvals)."""

    # -- leases ---------------------------------------------------------------------------------
    async def acquire_runs(self, node: str, lease: float, limit: int) -> list[Run]:
        """Lease up to `limit` runs that are queued or running and hold no live lease, oldest
        first. Two nodes never hold the same run: a run is returned to one caller only until
        its lease expires or is released."""

    async def acquire_run(self, node: str, run_id: int, lease: float) -> Run | None:
        """Lease one particular run if it is queued or running and holds no live lease (a CLI
        continuing a run in-process); None when someone else holds it or it is finished."""

    async def extend_leases(self, node: str, run_ids: Sequence[int], lease: float) -> list[int]:
        """Push back the expiry of leases `node` still holds; return those ids (a run missing
        from the answer was lost, e.g. reaped after expiry, and must not be worked on)."""

    async def release_run(self, node: str, run_id: int) -> bool:
        """Drop `node`'s lease on a run; False when `node` did not hold it."""

    async def reap_abandoned(self) -> list[int]:
        """Clear expired leases of unfinished runs and expired event leases; return the run ids
        (so they can be counted and logged). Expired leases are also free to acquire anyway."""

    # -- steps and logs -------------------------------------------------------------------------
    async def save_step(self, step: StepRun) -> None:
        """Create or replace a step's record (status, attempt, outputs, error, digest)."""

    async def get_steps(self, run_id: int) -> list[StepRun]:
        """The step records of a run, in the order they were first saved."""

    async def append_log(self, run_id: int, step_id: str, data: bytes) -> int:
        """Append to a step's log; return its size. Past the cap the log gets one truncation
        marker and further data is dropped (the step record says `log_truncated`)."""

    async def read_log(
        self, run_id: int, step_id: str, *, offset: int = 0, limit: int = 1 << 20
    ) -> LogSlice:
        """Up to `limit` bytes of a step's log from byte `offset`."""

    # -- approvals ------------------------------------------------------------------------------
    async def create_approval(self, approval: Approval) -> Approval:
        """Open a gate (its id is assigned); a second call for the same run and step while one
        is pending returns the pending one."""

    async def get_approval(self, approval_id: int) -> Approval | None:
        """One approval, or None."""

    async def list_approvals(
        self, *, status: str | None = None, run_id: int | None = None
    ) -> list[Approval]:
        """Approvals, oldest first, filtered by status and/or run."""

    async def add_decision(self, decision: Decision) -> Decision | None:
        """Append a decision (id and time assigned) to a pending approval; None, with nothing
        written, when the approval is no longer pending or the same forge comment
        (`forge`, `comment_id`) decided it already. Decisions are never changed or deleted:
        the database refuses it."""

    async def decisions(self, approval_id: int) -> list[Decision]:
        """Every decision on an approval, in order."""

    async def close_approval(self, approval_id: int, status: str) -> Approval | None:
        """Move a pending approval to approved or rejected, as its recorded decisions say (the
        database refuses any other change); None if it is not pending."""

    async def expire_approval(self, approval_id: int, decision: Decision) -> Approval | None:
        """Record the timeout's `decision` (via `timeout`) and close a pending approval as
        expired, in one transaction; None, with nothing written, if it is not pending."""

    # -- comment commands and pull request heads -----------------------------------------------
    async def claim_comment(
        self,
        forge: str,
        comment_id: str,
        *,
        event_id: int | None,
        repository: str,
        number: int,
        actor: str,
    ) -> bool:
        """Whether the comment's commands are this stored event's to act on: the first event
        to carry a forge comment claims it, and only that event (processed again after a crash)
        acts on it; any other delivery of the same comment, whatever its delivery id, gets
        False."""

    async def record_push(
        self, forge: str, repository: str, number: int, sha: str, pusher: str
    ) -> None:
        """Remember that `pusher` pushed commit `sha` to `repository` (from the forge's signed
        delivery: a push, number 0, or pull request `number` opened or updated with it as its
        head), for the author ban."""

    async def pushers(self, forge: str, repository: str, sha: str) -> set[str]:
        """Who pushed commit `sha` to the repository, as recorded, whatever pull request."""

    # -- retention ------------------------------------------------------------------------------
    async def prune(self, *, older_than: float, keep_last: int) -> int:
        """Delete runs finished before `older_than` (with their steps, logs, approvals and
        decisions), keeping the newest `keep_last` finished runs of each workflow, and events
        handled before `older_than`. Returns the number of runs deleted. The only path that
        removes anything of the audit trail, and only whole finished runs; it is logged."""


def open_store(url: str, **options: Any) -> Store:
    """The store for a database URL: `sqlite:///path` or `postgresql://...`."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from runner.store.sqlite import SqliteStore

        return SqliteStore(url, **options)
    if scheme in ("postgresql", "postgres"):
        from runner.store.postgres import PostgresStore  # psycopg only when asked for

        return PostgresStore(url, **options)
    raise UsageError(
        f"unknown database {scheme!r} in {url.split('@')[-1]!r}; expected one of "
        "['postgresql', 'sqlite'], e.g. sqlite:///./runner.db or postgresql://user@host/db"
    )
