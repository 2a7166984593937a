"""Workers: lease runs from the store and drive them with the engine, up to a limit at once.

Several processes (replicas) may run workers on one PostgreSQL: leases keep each run with one
of them. Housekeeping rides along: expired leases are reaped (their runs are picked up again)
and approvals past their deadline are closed so `on_timeout` applies.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from runner.approvals import expire_due
from runner.dag.engine import Engine
from runner.model import run_wait

log = logging.getLogger(__name__)


class WorkerPool:
    def __init__(self, engine: Engine, *, slots: int = 4, poll: float = 1.0) -> None:
        self.engine = engine
        self.store = engine.store
        self.node = engine.options.node
        self.slots = slots
        self.poll = poll
        self.tasks: dict[int, asyncio.Task[object]] = {}
        self.wake = asyncio.Event()

    def nudge(self) -> None:
        """Look for work now (a run was just requested or approved)."""
        self.wake.set()

    async def _housekeeping(self) -> None:
        await self.store.reap_abandoned()
        await expire_due(self.store, time.time())
        accepting = getattr(self.engine.executor, "accepting", None)
        if accepting is not None and not accepting():  # runs are not taken up: say why
            reason = "the executor's circuit breaker is open: runs start once it closes"
            await self.store.note_queued_waits(run_wait("executor", reason, time.time()))

    async def run_forever(self, stop: asyncio.Event, *, grace: float = 30.0) -> None:
        last_housekeeping = 0.0
        while not stop.is_set():
            self.wake.clear()
            try:
                if time.monotonic() - last_housekeeping > 5:
                    await self._housekeeping()
                    last_housekeeping = time.monotonic()
                free = self.slots - len(self.tasks)
                accepting = getattr(self.engine.executor, "accepting", None)
                if free > 0 and (accepting is None or accepting()):  # not while the circuit is open
                    for run in await self.store.acquire_runs(
                        self.node, self.engine.options.lease, free
                    ):
                        task = asyncio.create_task(self.engine.run(run.id))
                        self.tasks[run.id] = task
                        task.add_done_callback(functools.partial(self._done, run.id))
            except Exception as exc:  # the loop never dies: log and go on
                log.warning("worker loop: %s", exc)
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
            await asyncio.wait(waits, timeout=self.poll, return_when="FIRST_COMPLETED")
            for waiter in waits:
                waiter.cancel()
        await self.shutdown(grace)

    def _done(self, run_id: int, task: asyncio.Task[object]) -> None:
        self.tasks.pop(run_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("run %d: %s", run_id, task.exception())
        self.wake.set()

    async def shutdown(self, grace: float) -> None:
        """Let running steps finish for up to `grace` seconds, then stop and release leases:
        another node resumes those runs (an interrupted step runs again there)."""
        if self.tasks:
            log.info("waiting up to %.0fs for %d run(s)", grace, len(self.tasks))
            await asyncio.wait(list(self.tasks.values()), timeout=grace)
        for run_id, task in list(self.tasks.items()):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self.store.release_run(self.node, run_id)
