"""SQLite backend: the embedded default (`sqlite:///./runner.db`).

One connection, driven by aiosqlite's own thread so no query blocks the event loop. Writers are
serialised twice: in this process by a lock around each transaction, and across processes (a
`runner approve` next to `runner serve`) by `BEGIN IMMEDIATE` with a busy timeout. WAL lets
readers go on while one writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from runner.errors import TransientError, UsageError
from runner.store.sql import SqlStore
from runner.store.tx import Tx

BUSY_TIMEOUT_MS = 10_000


def sqlite_path(url: str) -> str:
    """The file of a `sqlite:///relative` or `sqlite:////absolute` URL (`:memory:` allowed)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise UsageError(
            f"bad SQLite URL {url!r}: write sqlite:///relative/path.db or sqlite:////abs/path.db"
        )
    return url[len(prefix) :]


def _split(script: str) -> list[str]:
    """Statements of a migration file, split where SQLite says a statement is complete."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip() and not current.strip().startswith("--"):
        statements.append(current.strip())
    return statements


class _SqliteTx:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cursor = await self.conn.execute(sql, tuple(params))
        count = cursor.rowcount
        await cursor.close()
        return count

    async def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        found = list(await self.conn.execute_fetchall(sql, tuple(params)))  # one thread hop
        return tuple(found[0]) if found else None

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.conn.execute_fetchall(sql, tuple(params))]

    async def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self.conn.executemany(sql, [tuple(r) for r in rows])

    async def script(self, sql: str) -> None:
        for statement in _split(sql):
            await self.conn.execute(statement)


class SqliteStore(SqlStore):
    dialect = "sqlite"

    def __init__(
        self, url: str, *, pool_size: int = 1, connect_timeout: float = 10.0, **options: Any
    ) -> None:
        super().__init__(**options)  # one connection: pool_size and connect_timeout don't apply
        self.path = sqlite_path(url)
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
        )
        try:
            await self._pragmas(conn)
        except BaseException:
            await conn.close()  # else its thread keeps the process alive
            raise
        self._conn = conn

    @staticmethod
    async def _pragmas(conn: aiosqlite.Connection) -> None:
        # Switching a new file to WAL needs a moment alone with it, and SQLite answers "locked"
        # at once, without its busy handler, while another process is creating the schema.
        delay = 0.01
        for attempt in range(50):
            try:
                await conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise TransientError(f"SQLite is busy: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
        for pragma in (
            f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
            "PRAGMA synchronous = NORMAL",
            "PRAGMA foreign_keys = ON",
        ):
            await conn.execute(pragma)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    @asynccontextmanager
    async def _statement(self) -> AsyncIterator[Tx]:
        """Statements that stand alone: SQLite makes each atomic by itself (no BEGIN/COMMIT,
        two thread hops saved)."""
        if self._conn is None:
            raise RuntimeError("the store is not open: call open() first")
        async with self._lock:
            try:
                yield _SqliteTx(self._conn)
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise TransientError(f"SQLite is busy: {exc}") from exc
                raise

    @asynccontextmanager
    async def _transaction(self, *, write: bool) -> AsyncIterator[Tx]:
        if self._conn is None:
            raise RuntimeError("the store is not open: call open() first")
        async with self._lock:
            conn = self._conn
            try:
                await conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.OperationalError as exc:
                raise TransientError(f"SQLite is busy: {exc}") from exc
            try:
                yield _SqliteTx(conn)
            except sqlite3.OperationalError as exc:
                await conn.rollback()
                if "locked" in str(exc) or "busy" in str(exc):
                    raise TransientError(f"SQLite is busy: {exc}") from exc
                raise
            except BaseException:
                await conn.rollback()
                raise
            try:
                await conn.commit()
            except sqlite3.OperationalError as exc:
                await conn.rollback()
                raise TransientError(f"SQLite commit failed: {exc}") from exc
