"""A circuit breaker around an executor: stop sending steps to an engine that keeps failing.

closed     steps go through; `failures` infrastructure failures within `window` seconds open it.
open       `run_step` raises `CircuitOpen` at once, without calling the engine; `health()` says
           degraded. After `cooldown` seconds the next call or health check finds it half-open.
half_open  one trial at a time (a step or an engine health check); `successes` consecutive
           successful trials close it, any infrastructure failure opens it again.

Only infrastructure failures count: a `TransientError` raised by the executor (engine
unreachable, session lost). A step that ran and failed (its exit code, a bad output, its own
timeout) is a result, and a success as far as the engine is concerned.

`CircuitOpen` is an `ExecutorUnavailable`, so the run engine treats it like any engine outage:
the step is not failed, its run waits. Every transition is logged, kept in `transitions`, and
set on the `runner_executor_circuit_state` gauge (0 closed, 1 half-open, 2 open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from runner import metrics
from runner.errors import TransientError
from runner.executors.base import (
    Executor,
    ExecutorUnavailable,
    Health,
    LogSink,
    StepResult,
    StepSpec,
)

log = logging.getLogger(__name__)

State = Literal["closed", "half_open", "open"]
GAUGE: dict[State, int] = {"closed": 0, "half_open": 1, "open": 2}


class CircuitOpen(ExecutorUnavailable):
    """The breaker refused the call without trying the engine; `retry_after` is in seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, kw_only=True)
class ExecutorState:
    """What readiness and metrics say about the executor: whether its engine answered the
    last time it was asked (None: not asked yet), the breaker's state, and since when (wall
    clock) each has been so."""

    name: str
    up: bool | None
    up_since: float
    breaker: State
    breaker_since: float
    next_trial_in: float | None  # seconds, while open
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "engine": "unknown" if self.up is None else "up" if self.up else "down",
            "engine_since": self.up_since,
            "breaker": self.breaker.replace("_", "-"),
            "breaker_since": self.breaker_since,
            "next_trial_in": self.next_trial_in,
            "detail": self.detail,
        }


@dataclass(frozen=True, kw_only=True)
class Transition:
    at: float  # wall clock (time.time)
    before: State
    after: State
    reason: str


class CircuitBreaker:
    """Wraps `executor`; itself an `Executor` (same `name`)."""

    def __init__(
        self,
        executor: Executor,
        *,
        failures: int = 5,
        window: float = 120.0,
        cooldown: float = 60.0,
        successes: int = 3,
        clock: Callable[[], float] = time.monotonic,
        history: int = 100,
    ) -> None:
        if failures < 1 or successes < 1 or window <= 0 or cooldown < 0:
            raise ValueError("failures and successes must be >= 1, window > 0, cooldown >= 0")
        self.executor = executor
        self.failures, self.window, self.cooldown, self.successes = (
            failures,
            window,
            cooldown,
            successes,
        )
        self.clock = clock
        self.transitions: deque[Transition] = deque(maxlen=history)
        self._state: State = "closed"
        self._failed_at: deque[float] = deque()
        self._opened_at = 0.0
        self._streak = 0  # consecutive successful trials while half-open
        self._trial = False  # a trial is in flight (half-open)
        self._last_error = ""
        self._sandboxed = False
        self._since = self._up_since = time.time()  # of the breaker's state, of `_up`
        self._up: bool | None = None  # the engine answered when last asked (None: not yet)
        self._detail = ""
        metrics.CIRCUIT.labels(self.name).set(GAUGE["closed"])
        metrics.EXECUTOR_SINCE.labels(self.name).set(self._since)

    @property
    def name(self) -> str:
        return self.executor.name

    @property
    def state(self) -> State:
        """The current state; an open circuit past its cool-down is half-open."""
        if self._state == "open" and self.clock() - self._opened_at >= self.cooldown:
            self._move("half_open", f"cool-down of {self.cooldown:g}s over")
        return self._state

    def accepting(self) -> bool:
        """Whether a step sent now would reach the engine (for a worker deciding to lease)."""
        state = self.state
        return state == "closed" or (state == "half_open" and not self._trial)

    def _move(self, after: State, reason: str) -> None:
        before = self._state
        if before == after:
            return
        self._state = after
        self._since = time.time()
        metrics.EXECUTOR_SINCE.labels(self.name).set(max(self._since, self._up_since))
        if after == "open":
            self._opened_at = self.clock()
        if after in ("half_open", "closed"):
            self._streak = 0
        if after == "closed":
            self._failed_at.clear()
        self.transitions.append(
            Transition(at=time.time(), before=before, after=after, reason=reason)
        )
        metrics.CIRCUIT.labels(self.name).set(GAUGE[after])
        level = logging.WARNING if after == "open" else logging.INFO
        log.log(level, "executor %s circuit %s -> %s: %s", self.name, before, after, reason)

    def _observe(self, up: bool, detail: str) -> None:
        """The engine answered (a step or a health check), or did not."""
        self._detail = detail
        if up != self._up:
            if self._up is not None:
                log.debug(  # the breaker's transitions are the log lines that matter
                    "executor %s engine %s: %s",
                    self.name,
                    "up" if up else "down",
                    detail,
                )
            self._up, self._up_since = up, time.time()
            metrics.EXECUTOR_SINCE.labels(self.name).set(max(self._since, self._up_since))
        metrics.EXECUTOR_UP.labels(self.name).set(1 if up else 0)

    def snapshot(self) -> ExecutorState:
        """The executor's state as last observed; asks the engine nothing."""
        state = self.state
        return ExecutorState(
            name=self.name,
            up=self._up,
            up_since=self._up_since,
            breaker=state,
            breaker_since=self._since,
            next_trial_in=round(self._retry_after(), 1) if state == "open" else None,
            detail=self._last_error if state == "open" else self._detail,
        )

    def _retry_after(self) -> float:
        return max(0.0, self._opened_at + self.cooldown - self.clock())

    def _admit(self) -> None:
        state = self.state
        if state == "closed":
            return
        if state == "half_open" and not self._trial:
            self._trial = True
            return
        wait = self._retry_after()
        why = "a trial step is running" if state == "half_open" else f"next trial in {wait:.0f}s"
        raise CircuitOpen(
            f"the {self.name} executor's circuit is {state.replace('_', '-')} after repeated "
            f"engine failures ({why}); last error: {self._last_error}",
            retry_after=wait,
        )

    def _success(self, trial: bool) -> None:
        if trial:
            self._trial = False
        if self._state == "half_open":
            self._streak += 1
            if self._streak >= self.successes:
                self._move("closed", f"{self._streak} consecutive successes")

    def _failure(self, error: BaseException | str, trial: bool) -> None:
        if trial:
            self._trial = False
        self._last_error = str(error)
        self._observe(False, self._last_error)
        if self._state == "half_open":
            self._move("open", f"trial failed: {self._last_error}")
            return
        now = self.clock()
        self._failed_at.append(now)
        while self._failed_at and now - self._failed_at[0] > self.window:
            self._failed_at.popleft()
        if self._state == "closed" and len(self._failed_at) >= self.failures:
            self._move(
                "open",
                f"{len(self._failed_at)} engine failures within {self.window:g}s; "
                f"last: {self._last_error}",
            )

    async def run_step(self, step: StepSpec, log: LogSink) -> StepResult:
        """The executor's `run_step`, or `CircuitOpen` without calling it."""
        self._admit()
        trial = self._trial
        try:
            result = await self.executor.run_step(step, log)
        except TransientError as exc:
            self._failure(exc, trial)
            raise
        except BaseException:  # cancelled, or a bug: says nothing about the engine
            if trial:
                self._trial = False
            raise
        self._observe(True, "the last step reached the engine")
        self._success(trial)
        return result

    def _present(self, health: Health) -> Health:
        """`health` of the executor as this circuit's state qualifies it."""
        state = self.state
        if state == "open":
            return Health(
                ok=False,
                detail=f"degraded: circuit open, next trial in {self._retry_after():.0f}s; "
                f"last error: {self._last_error}",
                sandboxed=health.sandboxed,
            )
        if state == "half_open":
            return replace(
                health,
                ok=False,
                detail=f"degraded: circuit half-open ({self._streak}/{self.successes} "
                f"successes): {health.detail}",
            )
        return health

    async def health(self) -> Health:
        """Degraded while open (the engine is not asked); otherwise the executor's health,
        marked while half-open. Readiness and metrics call this; it changes nothing."""
        if self.state == "open":
            return self._present(Health(ok=False, sandboxed=self._sandboxed))
        health = await self.executor.health()
        self._sandboxed = health.sandboxed
        self._observe(health.ok, health.detail)
        return self._present(health)

    async def check(self) -> Health:
        """The engine health check (a version query, for Dagger), run at start and
        periodically (`watch`): while closed a failed check counts as a failure, while
        half-open a check is a trial; while open it asks nothing until the cool-down is over."""
        state = self.state
        if state == "open" or (state == "half_open" and self._trial):
            return await self.health()
        trial = state == "half_open"
        self._trial = self._trial or trial
        try:
            health = await self.executor.health()
        except BaseException:
            if trial:
                self._trial = False
            raise
        self._sandboxed = health.sandboxed
        self._observe(health.ok, health.detail)
        if health.ok:
            self._success(trial)
        else:
            self._failure(health.detail, trial)
        return self._present(health)

    async def watch(self, stop: asyncio.Event, *, interval: float = 30.0) -> None:
        """Run `check` now and every `interval` seconds until `stop` is set; never dies."""
        while not stop.is_set():
            try:
                await self.check()
            except Exception as exc:  # a loop that stops checking would hide the engine
                log.warning("executor %s health check: %s", self.name, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def aclose(self) -> None:
        closer = getattr(self.executor, "aclose", None)
        if closer is not None:
            await closer()
