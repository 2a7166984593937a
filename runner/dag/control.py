"""Cancel and retry: what the CLI, the API and `/cancel` / `/retry` comments ask of a run."""

from __future__ import annotations

from dataclasses import replace

from runner.approvals import close_gates
from runner.errors import PermanentError
from runner.model import FINISHED, Run
from runner.store.base import Store

RERUN = frozenset({"failed", "cancelled", "rejected", "skipped", "running", "waiting_approval"})


async def cancel(store: Store, run_id: int, *, reason: str = "cancelled") -> Run:
    """Cancel a run that has not finished; a node working on it stops its steps."""
    run = await store.transition_run(run_id, "cancelled", error=reason)
    if run is None:
        current = await store.get_run(run_id)
        if current is None:
            raise PermanentError(f"there is no run {run_id}")
        raise PermanentError(
            f"run {run_id} is {current.status}; only an unfinished run can be cancelled"
        )
    await close_gates(store, run_id, f"the run was cancelled: {reason}")
    return run


async def retry(store: Store, run_id: int) -> Run:
    """Queue a finished, unsuccessful run again: its succeeded steps are kept, the others run
    again. A gated step that runs again needs a fresh approval."""
    current = await store.get_run(run_id)
    if current is None:
        raise PermanentError(f"there is no run {run_id}")
    if current.status not in FINISHED or current.status == "succeeded":
        raise PermanentError(
            f"run {run_id} is {current.status}; only a failed, cancelled or rejected run"
            " can be retried"
        )
    for step in await store.get_steps(run_id):
        if step.status in RERUN:
            await store.save_step(replace(step, status="pending", error=None, outputs=None))
    queued = await store.transition_run(run_id, "queued")
    if queued is None:
        raise PermanentError(f"run {run_id} changed while it was being retried; try again")
    return queued
