"""Durations (`90s`, `10m`, `1h30m`) and cron schedules with time zones.

Cron semantics are croniter's, the de-facto Vixie-cron reading (weekday 0 and 7 are Sunday,
`@daily` and friends accepted); the scheduler fires from the same parser, so the fire times a plan
shows are the ones that happen.
"""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_DURATION = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d))+")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `90s`, `10m`, `24h` or `1h30m`; ValueError otherwise."""
    if not _DURATION.fullmatch(text):
        raise ValueError(f"{text!r} is not a duration: write e.g. 90s, 10m, 24h or 1h30m")
    return sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(text))


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; ValueError with a hint when it does not exist."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as UTC or Europe/Berlin"
        ) from None


def check_cron(expression: str) -> str | None:
    """Why `expression` is not a five-field cron expression (or an @macro), or None."""
    fields = expression.split()
    if not expression.strip().startswith("@") and len(fields) != 5:
        return (
            f"cron {expression!r} has {len(fields)} fields; write five: "
            "minute hour day-of-month month day-of-week, e.g. '0 3 * * *'"
        )
    try:
        croniter(expression)
    except (CroniterError, ValueError, KeyError) as exc:
        return f"invalid cron {expression!r}: {exc}"
    return None


def next_fires(expression: str, timezone: str, after: datetime, count: int = 3) -> list[datetime]:
    """The next `count` fire times strictly after `after`, in the schedule's time zone."""
    it = croniter(expression, after.astimezone(zone(timezone)))
    return [it.get_next(datetime) for _ in range(count)]
