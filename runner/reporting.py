"""Reporting a run back to where it came from: a commit status per workflow run and one
kept-up-to-date comment on its pull request. A reporting failure is logged, never a run
failure.

A cancelled run is reported by whoever cancels it (`runner.dag.control.cancel`): its status
becomes final (`error` on GitHub, "cancelled: <reason>") and its comment says why, with no
prompt to approve.

A report identical to the last one sent for the run (same state, description and comment) is
not sent again: a run that waits and is tried again (a repository that cannot be fetched, an
executor that is down) costs forge API calls when what it shows changes, not at every try."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping

from runner import metrics
from runner.forges.api import ForgeReporting
from runner.forges.github import STATES
from runner.model import FINISHED, Approval, Run, StepRun
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
    if run.wait and run.status not in FINISHED:
        lines += ["", f"Waiting for {run.wait.get('for')}: {run.wait.get('reason')}"]
    if run.error:
        lines += ["", f"{run.error}"]
    return "\n".join(lines)


def describe(run: Run, pending: list[Approval]) -> str:
    """The commit status's description (GitHub keeps 140 characters)."""
    if run.status == "cancelled":
        text = f"cancelled: {run.error or 'no reason recorded'}"
    else:
        text = f"run {run.id}: {run.status}"
        if pending:
            text += f" ({pending[0].step_id} waits for approval)"
        elif run.wait and run.status not in FINISHED:
            text += f" (waits for {run.wait.get('for')})"
    return text if len(text) <= DESCRIPTION else text[: DESCRIPTION - 1] + "…"


REMEMBERED = 10_000  # runs whose last report is remembered (the oldest are forgotten)


class Reporter:
    def __init__(self, forges: Mapping[str, ForgeReporting]) -> None:
        self.forges = dict(forges)
        self._sent: OrderedDict[int, tuple[str, str, str | None]] = OrderedDict()

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
        description = describe(run, pending)
        number = (trigger.get("pull_request") or {}).get("number")
        body = run_comment(run, steps, pending) if number else None
        state = STATES.get(run.status, "pending")
        report = (state, description, body)
        if self._sent.get(run.id) == report:  # nothing new to show
            metrics.REPORTS_SKIPPED.labels(str(trigger.get("forge"))).inc()
            return
        try:
            await forge.status(
                str(repository), str(sha), f"runner/{run.workflow}", state, description
            )
            if number and body is not None:
                await forge.upsert_comment(
                    str(repository), int(number), f"<!-- runner:run:{run.id} -->", body
                )
            self._sent[run.id] = report
            self._sent.move_to_end(run.id)
            while len(self._sent) > REMEMBERED:
                self._sent.popitem(last=False)
        except Exception as exc:  # reporting never fails a run
            log.warning("reporting run %d to %s: %s", run.id, trigger.get("forge"), exc)
