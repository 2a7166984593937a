"""The store's logic in portable SQL, shared by the SQLite and PostgreSQL backends.

A backend supplies connections and transactions (`_transaction`), the migration lock and the
dialect's few differences; every query here runs unchanged on both (SQLite >= 3.35 has
RETURNING and ON CONFLICT). Statements use `?` placeholders; the PostgreSQL backend rewrites
them. Each public method is one transaction, retried as a whole on a transient error: every
write is safe to repeat (idempotency keys, guarded transitions, ON CONFLICT).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from importlib import resources
from typing import Any, TypeVar

from runner.errors import TransientError
from runner.model import (
    FINISHED,
    RUN_TRANSITIONS,
    Event,
    LogSlice,
    Run,
    RunRequest,
    RunStatus,
    SourceStatus,
    StepRun,
    StoredDocument,
)
from runner.store import budget, rows
from runner.store.audit import AuditQueries
from runner.store.base import LOG_LIMIT, TRUNCATION_MARKER
from runner.store.tx import Tx, where

log = logging.getLogger(__name__)
T = TypeVar("T")


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a transaction whose caller went away (cancelled)."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("transaction finished after its caller was cancelled: %s", task.exception())


def migrations(dialect: str) -> list[tuple[int, str, str]]:
    """(version, name, SQL) of the backend's migration files, in order."""
    folder = resources.files("runner.store").joinpath("migrations", dialect)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name.removesuffix(".sql"), entry.read_text("utf-8")))
    return sorted(found)


class SqlStore(AuditQueries):
    """Implements `runner.store.base.Store` on top of a backend's transactions."""

    dialect = "sql"
    skip_locked = ""  # PostgreSQL: " FOR UPDATE SKIP LOCKED"
    retries = 8

    def __init__(
        self, *, log_limit: int = LOG_LIMIT, clock: Callable[[], float] = time.time
    ) -> None:
        self.log_limit = log_limit
        self.clock = clock

    # -- what a backend provides -----------------------------------------------------------------
    def _transaction(self, *, write: bool) -> AbstractAsyncContextManager[Tx]:
        raise NotImplementedError

    def _statement(self) -> AbstractAsyncContextManager[Tx]:
        """For work whose every statement stands alone (each atomic by itself): a backend may
        skip BEGIN and COMMIT (PostgreSQL autocommit: one round trip instead of three)."""
        return self._transaction(write=True)

    async def _lock_migrations(self, tx: Tx) -> None:
        """Keep two processes from migrating at once (held until the transaction ends)."""

    # -- plumbing ---------------------------------------------------------------------------------
    async def _in_tx(
        self, body: Callable[[Tx], Awaitable[T]], *, write: bool = True, single: bool = False
    ) -> T:
        """Run `body` in a transaction (`single`: statements that stand alone, see
        `_statement`), retried on transient errors. A caller that is cancelled does not cut a
        transaction in half: it finishes (commit or rollback) on its own."""
        task = asyncio.ensure_future(self._attempts(body, write=write, single=single))
        task.add_done_callback(_consume)
        return await asyncio.shield(task)

    async def _attempts(
        self, body: Callable[[Tx], Awaitable[T]], *, write: bool, single: bool = False
    ) -> T:
        delay = 0.02
        end = budget.start_call()  # a request's budget (`budget.fail_fast`), or None
        for attempt in range(self.retries):
            try:
                context = self._statement() if single else self._transaction(write=write)
                async with context as tx:
                    return await body(tx)
            except TransientError as exc:
                pause = delay * (1 + random.random())
                if attempt == self.retries - 1 or (
                    end is not None and time.monotonic() + pause >= end
                ):
                    raise budget.StoreUnavailable(f"the database did not answer: {exc}") from exc
                log.warning("database busy or unreachable, retrying: %s", exc)
                await asyncio.sleep(pause)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- migrations -------------------------------------------------------------------------------
    async def _applied_versions(self, tx: Tx) -> set[int]:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at DOUBLE PRECISION NOT NULL)"
        )
        return {int(r[0]) for r in await tx.all("SELECT version FROM schema_migrations")}

    async def migrate(self) -> list[str]:
        async def body(tx: Tx) -> list[str]:
            await self._lock_migrations(tx)
            done = await self._applied_versions(tx)
            applied = []
            for version, name, sql in migrations(self.dialect):
                if version in done:
                    continue
                await tx.script(sql)
                await tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, self.clock()),
                )
                applied.append(name)
            return applied

        names = await self._in_tx(body)
        for name in names:
            log.info("applied migration %s", name)
        return names

    async def pending_migrations(self) -> list[str]:
        async def body(tx: Tx) -> list[str]:
            await self._lock_migrations(tx)
            done = await self._applied_versions(tx)
            return [name for version, name, _ in migrations(self.dialect) if version not in done]

        return await self._in_tx(body)

    # -- sources and revisions --------------------------------------------------------------------
    async def save_source_status(self, status: SourceStatus) -> None:
        conditions = rows.dumps(
            [
                {
                    "type": c.type,
                    "status": c.status,
                    "reason": c.reason,
                    "message": c.message,
                    "changed_at": c.changed_at,
                }
                for c in status.conditions
            ]
        )
        values = (
            status.name,
            status.attempted_revision,
            status.attempted_at,
            conditions,
            rows.dumps(list(status.errors)),
            status.last_fetch_at,
            status.last_fetch_duration,
            self.clock(),
        )

        async def body(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO sources (name, attempted_revision, attempted_at, conditions, errors,"
                " last_fetch_at, last_fetch_duration, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET"
                " attempted_revision = excluded.attempted_revision,"
                " attempted_at = excluded.attempted_at, conditions = excluded.conditions,"
                " errors = excluded.errors, last_fetch_at = excluded.last_fetch_at,"
                " last_fetch_duration = excluded.last_fetch_duration,"
                " updated_at = excluded.updated_at",
                values,
            )

        await self._in_tx(body)

    _SOURCE = (
        "SELECT name, applied_revision, applied_at, attempted_revision, attempted_at, conditions,"
        " errors, last_fetch_at, last_fetch_duration FROM sources"
    )

    async def get_source_status(self, name: str) -> SourceStatus | None:
        async def body(tx: Tx) -> SourceStatus | None:
            row = await tx.one(self._SOURCE + " WHERE name = ?", (name,))
            return rows.source(row) if row else None

        return await self._in_tx(body, write=False, single=True)

    async def list_source_statuses(self) -> list[SourceStatus]:
        async def body(tx: Tx) -> list[SourceStatus]:
            return [rows.source(r) for r in await tx.all(self._SOURCE + " ORDER BY name")]

        return await self._in_tx(body, write=False, single=True)

    async def apply_revision(
        self, source: str, revision: str, documents: Sequence[StoredDocument]
    ) -> None:
        now = self.clock()

        async def body(tx: Tx) -> None:
            if not await self._is_stored(tx, source, revision):
                await self._put_contents(tx, documents)
                entries: dict[rows.Key, rows.Entry] = {
                    (d.kind, d.name): rows.entry(d) for d in documents
                }
                pages = await self._paginate(tx, entries)
                await self._put_revision(tx, source, revision, pages, len(entries), now)
            await self._set_applied(tx, source, revision, now)

        await self._in_tx(body)

    async def apply_changes(
        self,
        source: str,
        revision: str,
        *,
        parent: str,
        changed: Sequence[StoredDocument],
        removed: Sequence[tuple[str, str]],
    ) -> bool:
        now = self.clock()
        puts: dict[rows.Key, rows.Entry] = {(d.kind, d.name): rows.entry(d) for d in changed}
        keys = set(puts) | set(removed)

        async def body(tx: Tx) -> bool:
            if not await self._is_stored(tx, source, revision):
                row = await tx.one(
                    "SELECT pages, document_count FROM revisions WHERE source = ? AND revision = ?",
                    (source, parent),
                )
                if row is None:
                    return False
                await self._put_contents(tx, changed)
                patched = None
                if row[0] is not None and row[1] is not None:
                    patched = await self._patch_pages(tx, json.loads(row[0]), row[1], puts, keys)
                if patched is None:  # pages from before 0002, or a size they no longer suit
                    entries = await self._entries(tx, source, parent) or {}
                    for key in keys:
                        entries.pop(key, None)
                    entries.update(puts)
                    patched = await self._paginate(tx, entries), len(entries)
                await self._put_revision(tx, source, revision, *patched, now)
            await self._set_applied(tx, source, revision, now)
            return True

        return await self._in_tx(body)

    async def _is_stored(self, tx: Tx, source: str, revision: str) -> bool:
        found = await tx.one(
            "SELECT 1 FROM revisions WHERE source = ? AND revision = ?", (source, revision)
        )
        return found is not None

    async def _put_contents(self, tx: Tx, documents: Sequence[StoredDocument]) -> None:
        digests = sorted({doc.digest for doc in documents})
        known: set[str] = set()
        for first in range(0, len(digests), 500):
            chunk = digests[first : first + 500]
            marks = ", ".join("?" for _ in chunk)
            found = await tx.all(
                f"SELECT digest FROM document_contents WHERE digest IN ({marks})", chunk
            )
            known.update(str(r[0]) for r in found)
        fresh = {d.digest: d for d in documents if d.digest not in known}
        await tx.many(  # in digest order, as pages: two writers never wait on each other in turn
            "INSERT INTO document_contents (digest, content) VALUES (?, ?)"
            " ON CONFLICT (digest) DO NOTHING",
            [(digest, rows.dumps(fresh[digest].content)) for digest in sorted(fresh)],
        )

    async def _put_pages(self, tx: Tx, pages: Sequence[Iterable[rows.Entry]]) -> list[str]:
        """Store pages (once per content); their digests, in order."""
        texts = [rows.page_text(entries) for entries in pages]
        digests = [rows.page_digest(text) for text in texts]
        await tx.many(
            "INSERT INTO document_pages (digest, entries) VALUES (?, ?)"
            " ON CONFLICT (digest) DO NOTHING",
            sorted(set(zip(digests, texts, strict=True))),
        )
        return digests

    async def _paginate(self, tx: Tx, entries: Mapping[rows.Key, rows.Entry]) -> list[str]:
        count = rows.page_count(len(entries))
        pages: list[list[rows.Entry]] = [[] for _ in range(count)]
        for key, entry in entries.items():
            pages[rows.page_of(key, count)].append(entry)
        return await self._put_pages(tx, pages)

    async def _patch_pages(
        self,
        tx: Tx,
        pages: list[str],
        size: int,
        puts: Mapping[rows.Key, rows.Entry],
        keys: set[rows.Key],
    ) -> tuple[list[str], int] | None:
        """The parent's pages with the changes made: only the pages holding a changed key are
        read and written. None when the new size wants another number of pages."""
        count = len(pages)
        touched: dict[int, set[rows.Key]] = {}
        for key in keys:
            touched.setdefault(rows.page_of(key, count), set()).add(key)
        texts = await self._pages(tx, [pages[i] for i in touched])
        new: dict[int, list[rows.Entry]] = {}
        for i, here in touched.items():
            entries = {(e[0], e[1]): e for e in rows.page_entries(texts[pages[i]])}
            size -= len(entries)
            for key in here:
                entries.pop(key, None)
                if key in puts:
                    entries[key] = puts[key]
            size += len(entries)
            new[i] = list(entries.values())
        if not count / 4 <= rows.page_count(size) <= count * 4:
            return None
        patched = list(pages)
        for i, digest in zip(new, await self._put_pages(tx, list(new.values())), strict=True):
            patched[i] = digest
        return patched, size

    async def _pages(self, tx: Tx, digests: Sequence[str]) -> dict[str, str]:
        unique = sorted(set(digests))
        texts: dict[str, str] = {}
        for first in range(0, len(unique), 500):
            chunk = unique[first : first + 500]
            marks = ", ".join("?" for _ in chunk)
            found = await tx.all(
                f"SELECT digest, entries FROM document_pages WHERE digest IN ({marks})", chunk
            )
            texts.update((str(r[0]), str(r[1])) for r in found)
        return texts

    async def _put_revision(
        self, tx: Tx, source: str, revision: str, pages: list[str], count: int, now: float
    ) -> None:
        await tx.execute(
            "INSERT INTO revisions (source, revision, applied_at, pages, document_count)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (source, revision) DO NOTHING",
            (source, revision, now, json.dumps(pages), count),
        )

    async def _set_applied(self, tx: Tx, source: str, revision: str, now: float) -> None:
        await tx.execute(
            "INSERT INTO sources (name, applied_revision, applied_at, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
            " applied_revision = excluded.applied_revision, applied_at = excluded.applied_at,"
            " updated_at = excluded.updated_at",
            (source, revision, now, now),
        )

    async def _entries(
        self, tx: Tx, source: str, revision: str
    ) -> dict[rows.Key, rows.Entry] | None:
        """The (kind, name) -> entry list of a stored revision; None when it is not stored."""
        row = await tx.one(
            "SELECT pages FROM revisions WHERE source = ? AND revision = ?", (source, revision)
        )
        if row is None:
            return None
        if row[0] is None:  # applied before migration 0002: one row per document
            found = await tx.all(
                "SELECT kind, name, digest, path FROM documents WHERE source = ? AND revision = ?",
                (source, revision),
            )
            return {(r[0], r[1]): (r[0], r[1], r[2], r[3]) for r in found}
        texts = await self._pages(tx, json.loads(row[0]))
        return {(e[0], e[1]): e for text in texts.values() for e in rows.page_entries(text)}

    async def _documents(self, tx: Tx, source: str, revision: str) -> list[StoredDocument]:
        entries = await self._entries(tx, source, revision)
        if not entries:
            return []
        digests = sorted({e[2] for e in entries.values()})
        contents: dict[str, Any] = {}
        for first in range(0, len(digests), 500):
            chunk = digests[first : first + 500]
            marks = ", ".join("?" for _ in chunk)
            found = await tx.all(
                f"SELECT digest, content FROM document_contents WHERE digest IN ({marks})", chunk
            )
            contents.update((str(r[0]), r[1]) for r in found)
        return [
            StoredDocument(
                kind=kind,  # type: ignore[arg-type]
                name=name,
                digest=digest,
                content=json.loads(contents[digest]),
                path=path,
            )
            for kind, name, digest, path in sorted(entries.values())
        ]

    async def applied_documents(self, source: str) -> tuple[str | None, list[StoredDocument]]:
        async def body(tx: Tx) -> tuple[str | None, list[StoredDocument]]:
            row = await tx.one("SELECT applied_revision FROM sources WHERE name = ?", (source,))
            if row is None or row[0] is None:
                return None, []
            return row[0], await self._documents(tx, source, row[0])

        return await self._in_tx(body, write=False)

    async def revision_documents(self, source: str, revision: str) -> list[StoredDocument]:
        async def body(tx: Tx) -> list[StoredDocument]:
            return await self._documents(tx, source, revision)

        return await self._in_tx(body, write=False)

    # -- events -----------------------------------------------------------------------------------
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
        now = self.clock()

        async def tx_body(tx: Tx) -> tuple[Event, bool]:
            row = await tx.one(
                "INSERT INTO events (forge, delivery_id, event_type, headers, body, received_at,"
                " body_digest) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
                f" RETURNING {rows.EVENT}",
                (forge, delivery_id, event_type, rows.dumps(dict(headers)), body, now, body_digest),
            )
            if row is not None:
                return rows.event(row), True
            existing = await self._same_delivery(tx, forge, delivery_id, body_digest)
            again = (
                await self._redelivered(tx, existing.id) if existing.status == "failed" else None
            )
            return (again, True) if again is not None else (existing, False)

        return await self._in_tx(tx_body)

    async def _same_delivery(
        self, tx: Tx, forge: str, delivery_id: str, body_digest: str | None
    ) -> Event:
        """The stored event a delivery repeats: same delivery id, or the same signed body."""
        row = await tx.one(
            f"SELECT {rows.EVENT} FROM events WHERE forge = ? AND delivery_id = ?",
            (forge, delivery_id),
        )
        if row is None and body_digest is not None:
            row = await tx.one(
                f"SELECT {rows.EVENT} FROM events WHERE forge = ? AND body_digest = ?",
                (forge, body_digest),
            )
        assert row is not None
        return rows.event(row)

    async def _redelivered(self, tx: Tx, event_id: int) -> Event | None:
        """A failed event delivered again (a forge's "redeliver") is handled again."""
        row = await tx.one(
            "UPDATE events SET status = 'pending', error = NULL, lease_owner = NULL,"
            " lease_expires_at = NULL, attempts = 0, not_before = NULL"
            f" WHERE id = ? AND status = 'failed' RETURNING {rows.EVENT}",
            (event_id,),
        )
        return rows.event(row) if row is not None else None

    async def claim_events(self, node: str, lease: float, limit: int) -> list[Event]:
        now = self.clock()

        async def body(tx: Tx) -> list[Event]:
            found = await tx.all(
                f"UPDATE events SET lease_owner = ?, lease_expires_at = ?, attempts = attempts + 1"
                f" WHERE id IN (SELECT id FROM events WHERE status = 'pending'"
                f" AND (lease_owner IS NULL OR lease_expires_at < ?)"
                f" AND (not_before IS NULL OR not_before <= ?) ORDER BY id LIMIT ?"
                f"{self.skip_locked}) RETURNING {rows.EVENT}",
                (node, now + lease, now, now, limit),
            )
            return sorted((rows.event(r) for r in found), key=lambda e: e.id)

        return await self._in_tx(body)

    async def finish_event(self, event_id: int, *, error: str | None = None) -> None:
        async def body(tx: Tx) -> None:
            await tx.execute(
                "UPDATE events SET status = ?, error = ?, handled_at = ?, lease_owner = NULL,"
                " lease_expires_at = NULL WHERE id = ?",
                ("failed" if error else "done", error, self.clock(), event_id),
            )

        await self._in_tx(body)

    async def retry_event(self, event_id: int, *, error: str, not_before: float) -> None:
        async def body(tx: Tx) -> None:
            await tx.execute(
                "UPDATE events SET error = ?, not_before = ?, lease_owner = NULL,"
                " lease_expires_at = NULL WHERE id = ? AND status = 'pending'",
                (error, not_before, event_id),
            )

        await self._in_tx(body)

    # -- runs -------------------------------------------------------------------------------------
    async def request_run(self, request: RunRequest) -> tuple[Run, bool]:
        now = self.clock()
        values = (
            request.workflow,
            request.source,
            request.revision,
            request.idempotency_key,
            rows.dumps(dict(request.trigger)),
            rows.dumps(dict(request.inputs)),
            request.concurrency_group,
            now,
            now,
        )

        async def body(tx: Tx) -> tuple[Run, bool]:
            row = await tx.one(
                "INSERT INTO runs (workflow, source, revision, status, idempotency_key,"
                " trigger_info, inputs, concurrency_group, created_at, updated_at)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)"
                f" ON CONFLICT (idempotency_key) DO NOTHING RETURNING {rows.RUN}",
                values,
            )
            if row is not None:
                return rows.run(row), True
            existing = await tx.one(
                f"SELECT {rows.RUN} FROM runs WHERE idempotency_key = ?", (request.idempotency_key,)
            )
            assert existing is not None
            return rows.run(existing), False

        return await self._in_tx(body)

    async def get_run(self, run_id: int) -> Run | None:
        async def body(tx: Tx) -> Run | None:
            row = await tx.one(f"SELECT {rows.RUN} FROM runs WHERE id = ?", (run_id,))
            return rows.run(row) if row else None

        return await self._in_tx(body, write=False, single=True)

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
        clause, params = where(
            ("concurrency_group = ?", group),
            ("workflow = ?", workflow),
            ("status IN", list(status) if status else None),
            ("created_at >= ?", since),
            ("id < ?", before_id),
        )
        params.append(limit)
        sql = f"SELECT {rows.RUN} FROM runs WHERE {clause} ORDER BY id DESC LIMIT ?"

        async def body(tx: Tx) -> list[Run]:
            return [rows.run(r) for r in await tx.all(sql, params)]

        return await self._in_tx(body, write=False, single=True)

    async def transition_run(
        self,
        run_id: int,
        to: RunStatus,
        *,
        error: str | None = None,
        only_from: Sequence[RunStatus] | None = None,
        wait: Mapping[str, Any] | None = None,
    ) -> Run | None:
        allowed = sorted(
            RUN_TRANSITIONS[to] & set(RUN_TRANSITIONS[to] if only_from is None else only_from)
        )
        now = self.clock()
        marks = ", ".join("?" for _ in allowed)
        if to in FINISHED:  # a finished run keeps no lease
            extra = "finished_at = ?, lease_owner = NULL, lease_expires_at = NULL"
        elif to == "waiting_approval":  # nobody works on a waiting run
            extra = "finished_at = NULL, lease_owner = NULL, lease_expires_at = NULL"
        elif to == "running":
            extra = "started_at = COALESCE(started_at, ?), finished_at = NULL"
        else:
            extra = "finished_at = NULL"
        extra_params: tuple[Any, ...] = (now,) if "?" in extra else ()
        waiting = None if wait is None else rows.dumps(dict(wait))

        async def body(tx: Tx) -> Run | None:
            row = await tx.one(
                f"UPDATE runs SET status = ?, updated_at = ?, error = ?, wait = ?, {extra}"
                f" WHERE id = ? AND status IN ({marks}) RETURNING {rows.RUN}",
                (to, now, error, waiting, *extra_params, run_id, *allowed),
            )
            return rows.run(row) if row else None

        return await self._in_tx(body)

    async def set_run_wait(self, run_id: int, wait: Mapping[str, Any] | None) -> Run | None:
        finished = ", ".join(f"'{s}'" for s in sorted(FINISHED))
        values = (None if wait is None else rows.dumps(dict(wait)), self.clock(), run_id)

        async def body(tx: Tx) -> Run | None:
            row = await tx.one(
                "UPDATE runs SET wait = ?, updated_at = ?"
                f" WHERE id = ? AND status NOT IN ({finished}) RETURNING {rows.RUN}",
                values,
            )
            return rows.run(row) if row else None

        return await self._in_tx(body)

    async def note_queued_waits(self, wait: Mapping[str, Any]) -> list[int]:
        now = self.clock()

        async def body(tx: Tx) -> list[int]:
            found = await tx.all(
                "UPDATE runs SET wait = ? WHERE status = 'queued' AND wait IS NULL"
                " AND (lease_owner IS NULL OR lease_expires_at < ?) RETURNING id",
                (rows.dumps(dict(wait)), now),
            )
            return sorted(int(r[0]) for r in found)

        return await self._in_tx(body)

    async def cancelled_runs(self, run_ids: Sequence[int]) -> list[int]:
        if not run_ids:
            return []
        marks = ", ".join("?" for _ in run_ids)
        sql = f"SELECT id FROM runs WHERE status = 'cancelled' AND id IN ({marks})"

        async def body(tx: Tx) -> list[int]:
            return sorted(int(r[0]) for r in await tx.all(sql, list(run_ids)))

        return await self._in_tx(body, write=False, single=True)

    async def count_runs(self, *, status: Sequence[RunStatus]) -> int:
        marks = ", ".join("?" for _ in status)

        async def body(tx: Tx) -> int:
            row = await tx.one(f"SELECT COUNT(*) FROM runs WHERE status IN ({marks})", status)
            return int(row[0]) if row else 0

        return await self._in_tx(body, write=False)

    # -- leases -----------------------------------------------------------------------------------
    async def acquire_runs(self, node: str, lease: float, limit: int) -> list[Run]:
        now = self.clock()

        async def body(tx: Tx) -> list[Run]:
            found = await tx.all(
                "UPDATE runs SET lease_owner = ?, lease_expires_at = ?"
                " WHERE id IN (SELECT id FROM runs WHERE status IN ('queued', 'running')"
                " AND (lease_owner IS NULL OR lease_expires_at < ?) ORDER BY id LIMIT ?"
                f"{self.skip_locked}) RETURNING {rows.RUN}",
                (node, now + lease, now, limit),
            )
            return sorted((rows.run(r) for r in found), key=lambda r: r.id)

        return await self._in_tx(body)

    async def acquire_run(self, node: str, run_id: int, lease: float) -> Run | None:
        now = self.clock()

        async def body(tx: Tx) -> Run | None:
            row = await tx.one(
                "UPDATE runs SET lease_owner = ?, lease_expires_at = ? WHERE id = ?"
                " AND status IN ('queued', 'running')"
                f" AND (lease_owner IS NULL OR lease_expires_at < ?) RETURNING {rows.RUN}",
                (node, now + lease, run_id, now),
            )
            return rows.run(row) if row else None

        return await self._in_tx(body)

    async def extend_leases(self, node: str, run_ids: Sequence[int], lease: float) -> list[int]:
        if not run_ids:
            return []
        now = self.clock()
        marks = ", ".join("?" for _ in run_ids)

        async def body(tx: Tx) -> list[int]:
            found = await tx.all(
                "UPDATE runs SET lease_expires_at = ? WHERE lease_owner = ?"
                f" AND lease_expires_at >= ? AND id IN ({marks}) RETURNING id",
                (now + lease, node, now, *run_ids),
            )
            return sorted(int(r[0]) for r in found)

        return await self._in_tx(body)

    async def release_run(self, node: str, run_id: int) -> bool:
        async def body(tx: Tx) -> bool:
            changed = await tx.execute(
                "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL"
                " WHERE id = ? AND lease_owner = ?",
                (run_id, node),
            )
            return changed > 0

        return await self._in_tx(body)

    async def reap_abandoned(self) -> list[int]:
        now = self.clock()

        async def body(tx: Tx) -> list[int]:
            found = await tx.all(
                "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL"
                " WHERE lease_owner IS NOT NULL AND lease_expires_at < ? RETURNING id",
                (now,),
            )
            await tx.execute(
                "UPDATE events SET lease_owner = NULL, lease_expires_at = NULL"
                " WHERE status = 'pending' AND lease_owner IS NOT NULL AND lease_expires_at < ?",
                (now,),
            )
            return sorted(int(r[0]) for r in found)

        reaped = await self._in_tx(body)
        if reaped:
            log.warning("reaped %d abandoned run lease(s): %s", len(reaped), reaped)
        return reaped

    # -- steps and logs ---------------------------------------------------------------------------
    async def save_step(self, step: StepRun) -> None:
        values = (
            step.run_id,
            step.step_id,
            step.run_id,
            step.status,
            step.attempt,
            step.started_at,
            step.finished_at,
            rows.dumps(step.outputs) if step.outputs is not None else None,
            step.error,
            step.inputs_digest,
        )

        async def body(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO step_runs (run_id, step_id, seq, status, attempt, started_at,"
                " finished_at, outputs, error, inputs_digest)"
                " VALUES (?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM step_runs WHERE run_id = ?),"
                " ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, step_id) DO UPDATE SET"
                " status = excluded.status, attempt = excluded.attempt,"
                " started_at = excluded.started_at, finished_at = excluded.finished_at,"
                " outputs = excluded.outputs, error = excluded.error,"
                " inputs_digest = excluded.inputs_digest",
                values,
            )

        await self._in_tx(body)

    async def get_steps(self, run_id: int) -> list[StepRun]:
        async def body(tx: Tx) -> list[StepRun]:
            found = await tx.all(
                f"SELECT {rows.STEP} FROM step_runs WHERE run_id = ? ORDER BY seq", (run_id,)
            )
            return [rows.step(r) for r in found]

        return await self._in_tx(body, write=False, single=True)

    async def append_log(self, run_id: int, step_id: str, data: bytes) -> int:
        async def body(tx: Tx) -> int:
            row = await tx.one(
                "SELECT log_size, log_truncated FROM step_runs WHERE run_id = ? AND step_id = ?",
                (run_id, step_id),
            )
            if row is None:
                await tx.execute(
                    "INSERT INTO step_runs (run_id, step_id, seq, status) VALUES (?, ?, (SELECT"
                    " COALESCE(MAX(seq), 0) + 1 FROM step_runs WHERE run_id = ?), 'pending')",
                    (run_id, step_id, run_id),
                )
                row = (0, 0)
            size, truncated = int(row[0]), bool(row[1])
            if truncated or not data:
                return size
            room = self.log_limit - size
            chunk, cut = (data, False) if len(data) <= room else (data[: max(room, 0)], True)
            if cut:
                chunk += TRUNCATION_MARKER % self.log_limit
            await tx.execute(
                "INSERT INTO step_logs (run_id, step_id, start_offset, data) VALUES (?, ?, ?, ?)",
                (run_id, step_id, size, chunk),
            )
            await tx.execute(
                "UPDATE step_runs SET log_size = ?, log_truncated = ?"
                " WHERE run_id = ? AND step_id = ?",
                (size + len(chunk), int(cut), run_id, step_id),
            )
            return size + len(chunk)

        return await self._in_tx(body)

    async def read_log(
        self, run_id: int, step_id: str, *, offset: int = 0, limit: int = 1 << 20
    ) -> LogSlice:
        async def body(tx: Tx) -> LogSlice:
            found = await tx.all(
                "SELECT start_offset, data FROM step_logs WHERE run_id = ? AND step_id = ?"
                " AND start_offset < ? AND start_offset + LENGTH(data) > ? ORDER BY start_offset",
                (run_id, step_id, offset + limit, offset),
            )
            state = await tx.one(
                "SELECT log_truncated FROM step_runs WHERE run_id = ? AND step_id = ?",
                (run_id, step_id),
            )
            buffer = b"".join(bytes(r[1]) for r in found)
            start = int(found[0][0]) if found else offset
            data = buffer[offset - start : offset - start + limit] if found else b""
            return LogSlice(
                data=data,
                offset=offset,
                next_offset=offset + len(data),
                truncated=bool(state[0]) if state else False,
            )

        return await self._in_tx(body, write=False)
