"""Benchmark: the store's run requests and acquire/release cycles, per backend, next to a bare
INSERT loop on the same database (one transaction per row, same driver) as the floor.

Usage: python bench/store.py [--requests N] [--cycles N] [--backend sqlite|postgresql|all]
PostgreSQL: a throwaway cluster is started (as in the tests) unless RUNNER_TEST_POSTGRES_URL
names a server.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

import aiosqlite
import psycopg

from runner.model import RunRequest
from runner.store.base import Store, open_store
from tests.pg import cluster


async def timed(count: int, work: Callable[[int], Awaitable[object]]) -> float:
    started = time.perf_counter()
    for i in range(count):
        await work(i)
    return count / (time.perf_counter() - started)


async def floor_sqlite(path: str, count: int) -> float:
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("CREATE TABLE floor (id INTEGER PRIMARY KEY, k TEXT UNIQUE)")

        async def insert(i: int) -> None:
            await conn.execute("BEGIN IMMEDIATE")
            await conn.execute("INSERT INTO floor (k) VALUES (?)", (f"k{i}",))
            await conn.commit()

        return await timed(count, insert)


async def floor_postgres(url: str, count: int) -> float:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE floor (id BIGSERIAL PRIMARY KEY, k TEXT UNIQUE)")

        async def insert(i: int) -> None:
            await conn.execute("INSERT INTO floor (k) VALUES (%s)", (f"k{i}",))

        return await timed(count, insert)


async def ours(store: Store, requests: int, cycles: int) -> tuple[float, float]:
    async def request(i: int) -> None:
        await store.request_run(
            RunRequest(workflow="wf", source="main", revision="r", idempotency_key=f"key-{i}")
        )

    request_rate = await timed(requests, request)

    async def cycle(i: int) -> None:
        (run,) = await store.acquire_runs("bench", 60, 1)
        await store.release_run("bench", run.id)

    return request_rate, await timed(cycles, cycle)


async def bench(name: str, url: str, floor: float, requests: int, cycles: int) -> None:
    store = open_store(url)
    await store.open()
    await store.migrate()
    try:
        request_rate, cycle_rate = await ours(store, requests, cycles)
    finally:
        await store.close()
    print(f"{name:10s} {'bare INSERT floor':23s} {floor:8.0f} /s")
    for label, rate in (("request_run", request_rate), ("acquire+release cycle", cycle_rate)):
        print(f"{name:10s} {label:23s} {rate:8.0f} /s  ({rate / floor:.2f}x floor)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "all"], default="all")
    args = parser.parse_args()
    if args.backend in ("sqlite", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            floor = await floor_sqlite(f"{tmp}/floor.db", args.requests)
            await bench("sqlite", f"sqlite:///{tmp}/runner.db", floor, args.requests, args.cycles)
    if args.backend in ("postgresql", "all"):
        with cluster() as server:
            base = server.rsplit("/", 1)[0]
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute("DROP DATABASE IF EXISTS bench_floor")
                conn.execute("DROP DATABASE IF EXISTS bench_runner")
                conn.execute("CREATE DATABASE bench_floor")
                conn.execute("CREATE DATABASE bench_runner")
            floor = await floor_postgres(f"{base}/bench_floor", args.requests)
            await bench("postgresql", f"{base}/bench_runner", floor, args.requests, args.cycles)


if __name__ == "__main__":
    asyncio.run(main())
