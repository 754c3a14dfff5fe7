"""Schedule parsing and human-readable descriptions (pure logic)."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab, schedule

from pkg.celery_task import describe_interval, describe_schedule, parse_schedule

TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=TZ)


@pytest.mark.parametrize(
    "value, text",
    [
        ("*/15 * * * *", "every 15 minutes (Asia/Shanghai)"),
        ("30 8 * * *", "at 08:30 every day (Asia/Shanghai)"),
        ("0 9 * * 1-5", "at 09:00, monday through friday (Asia/Shanghai)"),
        ({"minute": "0", "hour": "*/2"}, "every 2 hours (Asia/Shanghai)"),
    ],
)
def test_cron_descriptions(value: object, text: str) -> None:
    info = describe_schedule(parse_schedule("cron", value, tz=TZ, now=NOW), timezone="Asia/Shanghai")
    assert info.type == "cron"
    assert info.description.lower() == text.lower()


def test_cron_mapping_fills_missing_fields_with_star() -> None:
    sched = parse_schedule("cron", {"minute": 5}, tz=TZ, now=NOW)
    assert isinstance(sched, crontab)
    assert describe_schedule(sched, timezone="UTC").value == "5 * * * *"


@pytest.mark.parametrize(
    "seconds, text",
    [
        (1, "every second"),
        (30, "every 30 seconds"),
        (1.5, "every 1.5 seconds"),
        (60, "every minute"),
        (900, "every 15 minutes"),
        (7200, "every 2 hours"),
        (86400, "every day"),
        (90, "every 90 seconds"),
    ],
)
def test_interval_descriptions(seconds: float, text: str) -> None:
    assert describe_interval(seconds) == text


def test_interval_accepts_timedelta() -> None:
    sched = parse_schedule("interval", timedelta(minutes=5), tz=TZ, now=NOW)
    assert isinstance(sched, schedule) and sched.run_every == timedelta(minutes=5)


def test_once_reads_naive_times_in_the_client_timezone_and_never_fires_early() -> None:
    sched = parse_schedule("once", datetime(2026, 11, 24, 13, 0, 0, 250000), tz=TZ, now=NOW)
    info = describe_schedule(sched, timezone="Asia/Shanghai")
    assert info.type == "once"
    assert info.value == "2026-11-24T13:00:01+08:00"
    assert info.description == "once at 2026-11-24 13:00:01 (Asia/Shanghai)"


def test_once_accepts_iso_strings_with_offsets() -> None:
    sched = parse_schedule("once", "2026-11-24T06:00:00+00:00", tz=TZ, now=NOW)
    assert describe_schedule(sched, timezone="Asia/Shanghai").value == "2026-11-24T14:00:00+08:00"
