"""Cancel and retry: what the CLI, the API and `/cancel` / `/retry` comments ask of a run."""

from __future__ import annotations

from dataclasses import replace

from runner import metrics
from runner.approvals import close_gates
from runner.errors import PermanentError
from runner.model import FINISHED, Run
from runner.reporting import Reporter
from runner.store.base import Store

RERUN = frozenset({"failed", "cancelled", "rejected", "skipped", "running", "waiting_approval"})


async def cancel(
    store: Store, run_id: int, *, reason: str = "cancelled", reporter: Reporter | None = None
) -> Run:
    """Cancel a run that has not finished, and finish it everywhere at once: its pending gates
    close (a decision on them is refused), it counts in `runner_runs_total` as `cancelled`, and
    the forge it came from gets its final commit status and PR comment (through `reporter`).

    Whoever cancels does this (the API, the CLI, a comment, a superseding push, a newer run of
    its concurrency group), on whatever node: a run waiting for an approval has no worker to do
    it. A node working on the run stops its steps when it sees the cancel, and reports the run
    again with its steps' final states."""
    run = await store.transition_run(run_id, "cancelled", error=reason)
    if run is None:
        current = await store.get_run(run_id)
        if current is None:
            raise PermanentError(f"there is no run {run_id}")
        raise PermanentError(
            f"run {run_id} is {current.status}; only an unfinished run can be cancelled"
        )
    await close_gates(store, run_id, f"the run was cancelled: {reason}")
    metrics.run_finished(run.workflow, "cancelled", run.started_at, run.finished_at)
    if reporter is not None:
        await reporter.report_stored(store, run)
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
