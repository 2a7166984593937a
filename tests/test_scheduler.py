"""Cron schedules: each tick fires once, even with two schedulers on one PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from runner.model import Bundle, Schedule, Step, Trigger, Workflow
from runner.scheduler import Scheduler, latest_fire
from runner.store.base import Store, open_store

pytestmark = pytest.mark.anyio


def bundle(cron: str) -> Bundle:
    workflow = Workflow(
        name="nightly",
        source="workflows/nightly.yaml",
        digest="d",
        triggers=(Trigger(kind="schedule", config={"cron": cron, "timezone": "UTC"}),),
        steps=(Step(id="scan", agent="security-scanner"),),
    )
    return Bundle(workflows={"nightly": workflow})


@pytest.fixture
async def stores(postgres_url: str) -> AsyncIterator[tuple[Store, Store]]:
    first, second = open_store(postgres_url), open_store(postgres_url)
    for store in (first, second):
        await store.open()
        await store.migrate()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_the_same_fire_from_two_schedulers_is_one_run(stores: tuple[Store, Store]) -> None:
    a, b = Scheduler(stores[0].request_run), Scheduler(stores[1].request_run)
    schedule = Schedule(workflow="nightly", cron="0 3 * * *")
    at = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    created = await asyncio.gather(*(s.fire("main", schedule, "r1", at) for s in (a, b, a, b)))
    assert sorted(created) == [False, False, False, True]
    (run,) = await stores[0].list_runs()
    assert run.trigger["event"] == "schedule"
    assert run.idempotency_key == "schedule:main:nightly:2026-11-29T03:00:00+00:00"


async def test_two_running_schedulers_fire_each_tick_once(stores: tuple[Store, Store]) -> None:
    # croniter reads a sixth field as seconds: a tick every second, for the test only
    schedulers = [Scheduler(store.request_run) for store in stores]
    for scheduler in schedulers:
        await scheduler.sync("main", "r1", bundle("* * * * * *"))
        scheduler.start()
    await asyncio.sleep(3.5)
    for scheduler in schedulers:
        scheduler.shutdown()
    runs = await stores[0].list_runs(limit=100)
    keys = [r.idempotency_key for r in runs]
    assert len(runs) >= 3
    assert len(keys) == len(set(keys))
    seconds = sorted(datetime.fromisoformat(r.trigger["scheduled_at"]) for r in runs)
    assert all((b - a).total_seconds() == 1 for a, b in itertools.pairwise(seconds))


async def test_missed_fire_after_downtime_is_coalesced_into_one(
    stores: tuple[Store, Store],
) -> None:
    now = datetime(2026, 11, 29, 3, 20, tzinfo=UTC)  # the 03:00 fire was missed, 02:00 too
    scheduler = Scheduler(stores[0].request_run, clock=lambda: now)
    await scheduler.sync("main", "r1", bundle("0 * * * *"), catch_up=True)
    await scheduler.sync("main", "r1", bundle("0 * * * *"), catch_up=True)  # a second start
    (run,) = await stores[0].list_runs()
    assert run.trigger["scheduled_at"] == "2026-11-29T03:00:00+00:00"
    later = Scheduler(stores[0].request_run, clock=lambda: now.replace(hour=9, minute=0, second=1))
    await later.sync("main", "r1", bundle("0 3 * * *"), catch_up=True)  # 6 h late: dropped
    assert len(await stores[0].list_runs()) == 1
    fresh = Scheduler(stores[0].request_run, clock=lambda: now)
    await fresh.sync("main", "r2", bundle("15 * * * *"))  # a new schedule starts with its next
    assert len(await stores[0].list_runs()) == 1
    assert latest_fire(Schedule(workflow="x", cron="15 * * * *"), now).minute == 15
