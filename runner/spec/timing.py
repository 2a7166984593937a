"""Durations (`90s`, `10m`, `1h30m`) and cron schedules with time zones.

Cron semantics are croniter's, the de-facto Vixie-cron reading (weekday 0 and 7 are Sunday,
`@daily` and friends accepted); the scheduler fires from the same parser, so the fire times a plan
shows are the ones that happen.
"""

from __future__ import annotations

import difflib
import re
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

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


_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _field_problem(fields: list[str]) -> str | None:
    """Which of five fields croniter refuses, in words a cron user knows."""
    for i, (name, low, high) in enumerate(_FIELDS):
        probe = ["*"] * 5
        probe[i] = fields[i]
        try:
            croniter(" ".join(probe))
        except (CroniterError, ValueError, KeyError):
            numbers = [int(n) for n in re.findall(r"[0-9]+", fields[i])]
            outside = [n for n in numbers if not low <= n <= high]
            if outside and "/" not in fields[i]:
                return f"{name} {outside[0]} is out of range {low}-{high}"
            allowed = f"values {low}-{high}, lists, ranges, steps"
            return f"{name} field {fields[i]!r} is not valid ({allowed})"
    return None


@lru_cache(maxsize=1024)
def check_cron(expression: str) -> str | None:
    """Why `expression` is not a five-field cron expression (or an @macro) that fires, or None."""
    text = expression.strip()
    if text.startswith("@"):
        if text not in MACROS:
            close = difflib.get_close_matches(text, MACROS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of: {', '.join(MACROS)}"
            return f"unknown cron macro {text!r}; {hint}"
    else:
        fields = text.split()
        if len(fields) != 5:
            return (
                f"cron {expression!r} has {len(fields)} fields; write five: "
                "minute hour day-of-month month day-of-week, e.g. '0 3 * * *'"
            )
        problem = _field_problem(fields)
        if problem:
            return f"invalid cron {expression!r}: {problem}"
    try:
        croniter(text, _EPOCH).get_next(datetime)
    except CroniterBadDateError:
        return f"cron {expression!r} never fires: no date matches it"
    except (CroniterError, ValueError, KeyError) as exc:
        return f"invalid cron {expression!r}: {exc}"
    return None


def next_fires(expression: str, timezone: str, after: datetime, count: int = 3) -> list[datetime]:
    """The next `count` fire times strictly after `after`, in the schedule's time zone."""
    it = croniter(expression, after.astimezone(zone(timezone)))
    return [it.get_next(datetime) for _ in range(count)]
