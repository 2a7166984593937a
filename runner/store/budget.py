"""How long a store call may keep retrying before it gives up: a budget per call, set for a
scope (an HTTP request) through a context variable.

Background work (workers, the dispatcher, reconcilers) has no budget: it retries a transaction
`SqlStore.retries` times, riding out a database restart. A request someone waits for (a
webhook: GitHub gives up after 10 s) sets one with `fail_fast`: each store call then stops
retrying, and stops waiting for a pooled connection, once its budget is spent, and raises
`StoreUnavailable`, which the HTTP service answers 503 with `Retry-After`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from runner.errors import TransientError

_BUDGET: ContextVar[float | None] = ContextVar("runner_store_budget", default=None)
_END: ContextVar[float | None] = ContextVar("runner_store_call_end", default=None)


class StoreUnavailable(TransientError):
    """The database did not answer (unreachable, or busy) within the retries or the budget."""


@contextmanager
def fail_fast(seconds: float) -> Iterator[None]:
    """Within this scope every store call gives up after `seconds` (retries included)."""
    token = _BUDGET.set(seconds)
    try:
        yield
    finally:
        _BUDGET.reset(token)


def start_call() -> float | None:
    """Called by a store call as it starts (in its own task): its monotonic end, if any."""
    budget = _BUDGET.get()
    end = None if budget is None else time.monotonic() + budget
    _END.set(end)
    return end


def remaining(default: float) -> float:
    """How long the current store call may still wait (for a connection): `default` without
    a budget, else what is left of it (never below a few milliseconds)."""
    end = _END.get()
    if end is None:
        return default
    return max(0.01, min(default, end - time.monotonic()))
