"""Durations and cron schedules as a workflow author writes them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from runner.spec.timing import check_cron, next_fires, parse_duration, zone


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("24h", 86400), ("1h30m", 5400), ("2d", 172800), ("500ms", 0.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "10 minutes", "m", "1.5h", "-1s", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_weekday_zero_is_sunday_like_cron() -> None:
    fires = next_fires("0 3 * * 0", "UTC", datetime(2026, 11, 28, tzinfo=UTC))
    assert [f.strftime("%A %d %H:%M") for f in fires] == [
        "Sunday 29 03:00",
        "Sunday 06 03:00",
        "Sunday 13 03:00",
    ]


def test_fires_follow_the_time_zone_across_daylight_saving() -> None:
    fires = next_fires("0 3 * * *", "Europe/Berlin", datetime(2027, 3, 26, 12, tzinfo=UTC))
    assert [f.hour for f in fires] == [3, 3, 3]
    assert [f.utcoffset().total_seconds() / 3600 for f in fires] == [1, 2, 2]  # type: ignore[union-attr]


def test_cron_problems_say_what_to_write() -> None:
    assert check_cron("0 3 * * *") is None
    assert check_cron("@daily") is None
    assert "has 4 fields; write five" in (check_cron("0 3 * *") or "")
    assert "out of range" in (check_cron("0 25 * * *") or "")


def test_unknown_zone() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        zone("Mars/Olympus")
