"""Cancels that reach a running step within a second, on the node that runs it.

A cancel is a change in the store (the API, the CLI, a `/cancel` comment or a superseding push,
from any process of any node). While a node works on runs, one task asks the store every half
second which of them are cancelled now (one query for all of them, on either database) and wakes
their executions, which stop their steps. The heartbeat, every third of the lease, still notices
too: this only makes it quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Iterator

from runner.store.base import Store

log = logging.getLogger(__name__)
INTERVAL = 0.5  # seconds between two looks at the store while runs are worked on


class CancelWatch:
    def __init__(self, store: Store, *, interval: float = INTERVAL) -> None:
        self.store = store
        self.interval = interval
        self.events: dict[int, asyncio.Event] = {}
        self.task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def watching(self, run_id: int, event: asyncio.Event) -> Iterator[None]:
        """Set `event` as soon as the run is cancelled, while inside this block."""
        self.events[run_id] = event
        if self.task is None or self.task.done():
            # a context of its own: not the first run's log context and trace
            self.task = asyncio.create_task(self._poll(), context=contextvars.Context())
        try:
            yield
        finally:
            if self.events.get(run_id) is event:
                del self.events[run_id]
            if not self.events and self.task is not None:
                self.task.cancel()
                self.task = None

    def wake(self, run_id: int) -> None:
        """The run was cancelled in this process: stop its steps without waiting for the poll."""
        event = self.events.get(run_id)
        if event is not None:
            event.set()

    async def _poll(self) -> None:
        failing = False
        while self.events:
            await asyncio.sleep(self.interval)
            try:
                cancelled = await self.store.cancelled_runs(list(self.events))
            except Exception as exc:  # the store away: the heartbeat sees to the leases
                if not failing:
                    log.warning("cannot look for cancelled runs: %s", exc)
                failing = True
                continue
            failing = False
            for run_id in cancelled:
                event = self.events.get(run_id)
                if event is not None and not event.is_set():
                    log.info("run %d was cancelled: stopping its steps", run_id)
                    event.set()
