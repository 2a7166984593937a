"""Several real processes on one database: the guarantees replicas rely on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from runner.store.base import open_store
from runner.store.sql import migrations

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.anyio


def worker(url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store.worker", url, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return out


@pytest.fixture
async def migrated(store_url: str) -> str:
    store = open_store(store_url)
    await store.open()
    await store.migrate()
    await store.close()
    return store_url


async def test_two_processes_same_keys_create_each_run_once(migrated: str) -> None:
    a = worker(migrated, "request", "0", "1000")
    b = worker(migrated, "request", "0", "1000")
    created = int(finish(a)) + int(finish(b))
    store = open_store(migrated)
    await store.open()
    try:
        runs = await store.list_runs(limit=5000)
    finally:
        await store.close()
    assert created == 1000
    assert len(runs) == 1000
    assert len({r.idempotency_key for r in runs}) == 1000


async def test_two_workers_never_hold_the_same_run(migrated: str) -> None:
    a = worker(migrated, "request", "0", "500")
    finish(a)
    x, y = worker(migrated, "acquire", "node-x"), worker(migrated, "acquire", "node-y")
    held_x, held_y = set(json.loads(finish(x))), set(json.loads(finish(y)))
    assert not held_x & held_y
    assert len(held_x | held_y) == 500


async def test_migrating_from_two_processes_at_once(store_url: str) -> None:
    code = (
        "import asyncio, sys\n"
        "from runner.store.base import open_store\n"
        "async def m():\n"
        "    s = open_store(sys.argv[1]); await s.open()\n"
        "    print(len(await s.migrate())); await s.close()\n"
        "asyncio.run(m())\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, store_url], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    counts = sorted(int(p.communicate(timeout=120)[0]) for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert counts == [0, len(migrations("sqlite"))]  # one applied them all, the other none


async def test_sigkill_loses_nothing_committed(migrated: str) -> None:
    process = worker(migrated, "commit-loop")
    assert process.stdout is not None
    committed = [int(process.stdout.readline()) for _ in range(50)]
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    store = open_store(migrated)
    await store.open()
    try:
        for run_id in committed:
            assert await store.get_run(run_id) is not None
    finally:
        await store.close()


async def test_sigkill_mid_transaction_leaves_nothing_half_written(migrated: str) -> None:
    process = worker(migrated, "big-apply", "20000")
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "start"
    time.sleep(0.3)  # inside the transaction (it takes seconds); its outcome is checked, not timed
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    await anyio.sleep(0.2)
    store = open_store(migrated)
    await store.open()
    try:
        revision, docs = await store.applied_documents("main")
        written = await store.revision_documents("main", "big")
    finally:
        await store.close()
    assert (revision, len(docs)) in ((None, 0), ("big", 20000))
    assert len(written) in (0, 20000)
