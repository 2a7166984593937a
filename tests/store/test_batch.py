"""Group commit of webhook deliveries on both stores: a burst of concurrent deliveries, some of
them repeated, is stored once each, every caller hears whether its delivery was new, and the
stored rows are the deliveries as sent."""

from __future__ import annotations

import asyncio

import pytest

from runner.store.base import Store
from runner.store.batch import EventWriter
from runner.store.sql import SqlStore

pytestmark = pytest.mark.anyio


async def test_a_burst_is_stored_once_each_with_the_right_answers(store: Store) -> None:
    assert isinstance(store, SqlStore)
    writer = EventWriter(store, max_batch=16)
    ids = [f"d-{i % 40}" for i in range(60)]  # 20 of them are repeats

    async def one(delivery: str, n: int) -> tuple[str, int, bool]:
        stored = await writer.add(
            forge="github",
            delivery_id=delivery,
            event_type="push",
            headers={"x-github-event": "push"},
            body=f'{{"n": {n}}}'.encode(),
        )
        return delivery, stored.id, stored.new

    answers = await asyncio.gather(*(one(d, n) for n, d in enumerate(ids)))
    assert sum(1 for _, _, new in answers if new) == 40
    by_delivery: dict[str, set[int]] = {}
    for delivery, event_id, _ in answers:
        by_delivery.setdefault(delivery, set()).add(event_id)
    assert all(len(found) == 1 for found in by_delivery.values())  # a repeat finds the first

    events = await store.claim_events("t", 60.0, 1000)
    assert sorted(e.delivery_id for e in events) == sorted(set(ids))
    first = {d: n for n, d in reversed(list(enumerate(ids)))}
    for event in events:
        assert event.body == f'{{"n": {first[event.delivery_id]}}}'.encode()
        assert event.headers == {"x-github-event": "push"}
