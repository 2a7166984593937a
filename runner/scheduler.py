"""Cron schedules of the applied workflows, fired by APScheduler.

Each fire requests a run with the idempotency key (source, workflow, fire time), so two
replicas, or a restart, never start a scheduled run twice: whoever fires first creates the
run, the others find it. Cron is read by croniter (the same reading `runner plan` shows), through
a small APScheduler trigger.

Misfire policy (coalesce): fires missed while no runner was up are not replayed one by one.
At start, the most recent missed fire of each schedule of the revision that was applied before
is requested once if it is at most `misfire_grace` seconds old (default one hour); older ones
are dropped. A schedule added by a new commit starts with its next fire.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from croniter import croniter

from runner.model import Bundle, Run, RunRequest, Schedule
from runner.spec.timing import zone

log = logging.getLogger(__name__)
RequestRun = Callable[[RunRequest], Awaitable[tuple[Run, bool]]]


class CronTrigger(BaseTrigger):  # type: ignore[misc]
    """APScheduler trigger over a croniter expression in an IANA time zone."""

    def __init__(self, cron: str, timezone: str) -> None:
        self.cron = cron
        self.timezone = zone(timezone)

    def get_next_fire_time(self, previous: datetime | None, now: datetime) -> datetime | None:
        base = (previous or now).astimezone(self.timezone)
        fire: datetime = croniter(self.cron, base).get_next(datetime)
        return fire

    def __str__(self) -> str:
        return f"cron[{self.cron} {self.timezone}]"


def fire_key(source: str, schedule: Schedule, at: datetime) -> str:
    return f"schedule:{source}:{schedule.workflow}:{at.astimezone(UTC).isoformat()}"


def latest_fire(schedule: Schedule, now: datetime) -> datetime:
    """The most recent fire time at or before `now`."""
    it = croniter(
        schedule.cron, (now + timedelta(microseconds=1)).astimezone(zone(schedule.timezone))
    )
    fire: datetime = it.get_prev(datetime)
    return fire


class Scheduler:
    def __init__(
        self,
        request_run: RequestRun,
        *,
        misfire_grace: float = 3600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.request_run = request_run
        self.misfire_grace = misfire_grace
        self.clock = clock
        self.aps = AsyncIOScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1}
        )
        self.jobs: dict[
            str, tuple[str, Schedule, str]
        ] = {}  # job id -> (source, schedule, revision)

    def start(self) -> None:
        self.aps.start()

    def shutdown(self) -> None:
        if self.aps.running:
            self.aps.shutdown(wait=False)

    async def fire(self, source: str, schedule: Schedule, revision: str, at: datetime) -> bool:
        """Request the run of one fire; True when this call created it."""
        _, created = await self.request_run(
            RunRequest(
                workflow=schedule.workflow,
                source=source,
                revision=revision,
                idempotency_key=fire_key(source, schedule, at),
                trigger={"event": "schedule", "actor": "runner", "scheduled_at": at.isoformat()},
            )
        )
        log.info(
            "schedule %s of %s at %s: %s",
            schedule.cron,
            schedule.workflow,
            at,
            "run requested" if created else "already requested",
        )
        return created

    async def _job(self, job_id: str) -> None:
        source, schedule, revision = self.jobs[job_id]
        await self.fire(source, schedule, revision, latest_fire(schedule, self.clock()))

    async def sync(
        self, source: str, revision: str, bundle: Bundle, *, catch_up: bool = False
    ) -> dict[str, list[str]]:
        """Make the jobs of `source` those of `bundle`. With `catch_up` (at start, for the
        revision that was applied before), request each schedule's latest missed fire."""
        wanted: dict[str, Schedule] = {}
        for workflow in bundle.workflows.values():
            for schedule in workflow.schedules:
                wanted[f"{source}|{schedule.workflow}|{schedule.cron}|{schedule.timezone}"] = (
                    schedule
                )
        mine = {jid for jid, (src, _, _) in self.jobs.items() if src == source}
        removed = sorted(mine - wanted.keys())
        for job_id in removed:
            self.jobs.pop(job_id)
            if self.aps.get_job(job_id):
                self.aps.remove_job(job_id)
        added = []
        for job_id, schedule in wanted.items():
            if job_id not in self.jobs:
                added.append(job_id)
            self.jobs[job_id] = (source, schedule, revision)
            if not self.aps.get_job(job_id):
                self.aps.add_job(
                    self._job,
                    CronTrigger(schedule.cron, schedule.timezone),
                    args=[job_id],
                    id=job_id,
                    misfire_grace_time=int(self.misfire_grace),
                )
            now = self.clock()
            last = latest_fire(schedule, now)
            if catch_up and (now - last).total_seconds() <= self.misfire_grace:
                await self.fire(source, schedule, revision, last)
        return {"added": added, "removed": removed}
