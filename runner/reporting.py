"""Reporting a run back to where it came from: a commit status per workflow run and one
kept-up-to-date comment on its pull request. A reporting failure is logged, never a run
failure.

A cancelled run is reported by whoever cancels it (`runner.dag.control.cancel`): its status
becomes final (`error` on GitHub, "cancelled: <reason>") and its comment says why, with no
prompt to approve."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from runner.forges.api import ForgeReporting
from runner.forges.github import STATES
from runner.model import Approval, Run, StepRun
from runner.store.base import Store

log = logging.getLogger(__name__)
DESCRIPTION = 140


def run_comment(run: Run, steps: list[StepRun], pending: list[Approval]) -> str:
    lines = [
        f"**runner** · `{run.workflow}` · run {run.id}: **{run.status}**",
        "",
        "| step | status |",
        "| --- | --- |",
    ]
    lines += [f"| {s.step_id} | {s.status} |" for s in steps]
    if run.status == "cancelled":  # nothing waits any more: no prompt to decide
        lines += [
            "",
            f"Cancelled: {run.error or 'no reason recorded'}. Its approvals are closed;"
            f" comment `/retry {run.id}` to run it again.",
        ]
        return "\n".join(lines)
    for gate in pending:
        who = ", ".join(gate.policy.approvers) or "anyone with write access"
        lines += [
            "",
            f"Step `{gate.step_id}` waits for {gate.policy.required} approval(s) from {who}: "
            f"comment `/approve {run.id} {gate.step_id}` (or `/reject {run.id} reason`).",
        ]
    if run.error:
        lines += ["", f"{run.error}"]
    return "\n".join(lines)


def describe(run: Run, pending: list[Approval]) -> str:
    """The commit status's description (GitHub keeps 140 characters)."""
    if run.status == "cancelled":
        text = f"cancelled: {run.error or 'no reason recorded'}"
    else:
        text = f"run {run.id}: {run.status}" + (
            f" ({pending[0].step_id} waits for approval)" if pending else ""
        )
    return text if len(text) <= DESCRIPTION else text[: DESCRIPTION - 1] + "…"


class Reporter:
    def __init__(self, forges: Mapping[str, ForgeReporting]) -> None:
        self.forges = dict(forges)

    async def report_stored(self, store: Store, run: Run) -> None:
        """Report `run` with its steps and pending gates as stored; never raises."""
        if not run.trigger.get("forge"):
            return
        try:
            steps = await store.get_steps(run.id)
            pending = await store.list_approvals(run_id=run.id, status="pending")
        except Exception as exc:  # reporting never fails what asked for it
            log.warning("reporting run %d: reading it: %s", run.id, exc)
            return
        await self.report(run, steps, pending)

    async def report(self, run: Run, steps: list[StepRun], pending: list[Approval]) -> None:
        trigger = run.trigger
        forge = self.forges.get(str(trigger.get("forge", "")))
        repository, sha = trigger.get("repository"), trigger.get("sha")
        if forge is None or not repository or not sha:
            return
        try:
            description = describe(run, pending)
            await forge.status(
                str(repository),
                str(sha),
                f"runner/{run.workflow}",
                STATES.get(run.status, "pending"),
                description,
            )
            number = (trigger.get("pull_request") or {}).get("number")
            if number:
                await forge.upsert_comment(
                    str(repository),
                    int(number),
                    f"<!-- runner:run:{run.id} -->",
                    run_comment(run, steps, pending),
                )
        except Exception as exc:  # reporting never fails a run
            log.warning("reporting run %d to %s: %s", run.id, trigger.get("forge"), exc)
