"""PostgreSQL backend (psycopg 3, async, with psycopg_pool): production and several replicas.

Acquiring work uses `FOR UPDATE SKIP LOCKED`, so replicas never wait on or take each other's rows.
A lost connection (server restart, failover) is a transient error: the store retries the whole
transaction, and the pool discards the broken connection. Connections are not pinged before use
(that would cost a round trip per transaction).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from runner.errors import TransientError
from runner.store.budget import remaining
from runner.store.sql import SqlStore
from runner.store.tx import Tx

MIGRATION_LOCK = 0x72756E6E  # "runn": pg_advisory_xact_lock key for migrations
POOL_WAIT = 10.0  # seconds a call waits for a pooled connection (less within a budget)
_PLACEHOLDER = re.compile(r"\?")
_TRANSIENT = (
    psycopg.OperationalError,
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.LockNotAvailable,
    pg_errors.AdminShutdown,
    pg_errors.CannotConnectNow,
    PoolTimeout,
)


def _sql(query: str) -> str:
    return _PLACEHOLDER.sub("%s", query.replace("%", "%%"))


class _PgTx:
    def __init__(self, cursor: psycopg.AsyncCursor[Any]) -> None:
        self.cursor = cursor

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        await self.cursor.execute(_sql(sql), tuple(params))
        return self.cursor.rowcount

    async def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        await self.cursor.execute(_sql(sql), tuple(params))
        return await self.cursor.fetchone()

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        await self.cursor.execute(_sql(sql), tuple(params))
        return await self.cursor.fetchall()

    async def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self.cursor.executemany(_sql(sql), [tuple(r) for r in rows])

    async def script(self, sql: str) -> None:
        await self.cursor.execute(sql.encode())  # no parameters: several statements at once


def _redact(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


class PostgresStore(SqlStore):
    dialect = "postgresql"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    for_update = " FOR UPDATE"

    def __init__(
        self, url: str, *, pool_size: int = 10, connect_timeout: float = 10.0, **options: Any
    ) -> None:
        super().__init__(**options)
        self.url = url
        self.connect_timeout = connect_timeout
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=POOL_WAIT,
            name="runner",
            # transactions are explicit (`_transaction`); a statement alone is its own
            kwargs={"autocommit": True},
        )

    async def open(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=self.connect_timeout)
        except PoolTimeout as exc:
            raise TransientError(f"cannot connect to PostgreSQL at {_redact(self.url)}") from exc

    async def close(self) -> None:
        await self._pool.close()

    async def _lock_migrations(self, tx: Tx) -> None:
        await tx.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))

    @asynccontextmanager
    async def _statement(self) -> AsyncIterator[Tx]:
        try:
            async with (
                self._pool.connection(timeout=remaining(POOL_WAIT)) as conn,
                conn.cursor() as cursor,
            ):
                yield _PgTx(cursor)
        except _TRANSIENT as exc:
            raise TransientError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc

    @asynccontextmanager
    async def _transaction(self, *, write: bool) -> AsyncIterator[Tx]:
        try:
            async with (
                self._pool.connection(timeout=remaining(POOL_WAIT)) as conn,
                conn.transaction(),
                conn.cursor() as cursor,
            ):
                yield _PgTx(cursor)
        except _TRANSIENT as exc:
            raise TransientError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
