"""Fire times of periodic entries: the next few, and which past fires were missed or late.

Cron follows Celery's rule (minute, hour, day of month, month *and* day of week must
all match), evaluated in the schedule's time zone; intervals count from the entry's
next due time as RedBeat stores it; ``once`` fires at its time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from celery.schedules import crontab_parser

__all__ = ["FireCheck", "check_fires", "next_fire_times", "period_seconds", "previous_fire_time"]

_CRON = (
    ("minute", 60, 0),
    ("hour", 24, 0),
    ("day_of_month", 31, 1),
    ("month_of_year", 12, 1),
    ("day_of_week", 7, 0),
)
#: How far the search for cron times looks (a Feb-29-on-a-Monday cron fires every 28 years).
_MAX_DAYS = 30 * 366


def _cron_sets(expr: str) -> dict[str, set[int]]:
    parts = expr.split()
    return {
        name: set(crontab_parser(size, low).parse(part))
        for (name, size, low), part in zip(_CRON, parts, strict=True)
    }


def _cron_days(sets: dict[str, set[int]], start: datetime, step: int) -> Iterator[datetime]:
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    for _ in range(_MAX_DAYS):
        if (
            day.month in sets["month_of_year"]
            and day.day in sets["day_of_month"]
            and (day.weekday() + 1) % 7 in sets["day_of_week"]
        ):
            yield day
        day = (day + timedelta(days=step)).replace(hour=0, minute=0)


def _cron_after(expr: str, tz: ZoneInfo, after: datetime, count: int) -> list[datetime]:
    sets = _cron_sets(expr)
    local = after.astimezone(tz)
    found: list[datetime] = []
    for day in _cron_days(sets, local.replace(tzinfo=None), 1):
        for hour in sorted(sets["hour"]):
            for minute in sorted(sets["minute"]):
                when = day.replace(hour=hour, minute=minute).replace(tzinfo=tz)
                if when > local:
                    found.append(when)
                    if len(found) == count:
                        return found
    return found


def previous_fire_time(schedule: dict[str, Any], tz: ZoneInfo, before: datetime) -> datetime | None:
    """The latest cron time at or before ``before`` (``None`` for other schedule types)."""
    if schedule.get("type") != "cron":
        return None
    sets = _cron_sets(str(schedule["value"]))
    local = before.astimezone(tz)
    for day in _cron_days(sets, local.replace(tzinfo=None), -1):
        for hour in sorted(sets["hour"], reverse=True):
            for minute in sorted(sets["minute"], reverse=True):
                when = day.replace(hour=hour, minute=minute).replace(tzinfo=tz)
                if when <= local:
                    return when
    return None


def next_fire_times(
    schedule: dict[str, Any], *, timezone: str, now: datetime, next_run_at: datetime | None, count: int = 5
) -> list[datetime]:
    """The next ``count`` times the entry fires (in ``timezone``), from ``now`` on."""
    tz = ZoneInfo(timezone)
    kind, value = schedule.get("type"), schedule.get("value")
    if kind == "cron":
        return _cron_after(str(value), tz, now, count)
    if kind == "interval":
        step = timedelta(seconds=float(str(value)))
        first = next_run_at or now + step
        if first < now:  # overdue: beat sends it at its next tick
            first = now
        return [(first + i * step).astimezone(tz) for i in range(count)]
    if kind == "once":
        when = datetime.fromisoformat(str(value))
        return [when.astimezone(tz)] if when > now else []
    return []


def period_seconds(schedule: dict[str, Any], *, timezone: str, now: datetime) -> float | None:
    """The time between two fires: the interval, or the gap of the next two cron times."""
    if schedule.get("type") == "interval":
        return float(schedule["value"])
    if schedule.get("type") == "cron":
        times = _cron_after(str(schedule["value"]), ZoneInfo(timezone), now, 2)
        return (times[1] - times[0]).total_seconds() if len(times) == 2 else None
    return None


@dataclass(frozen=True)
class FireCheck:
    """What the recorded runs of an entry say about its past fires."""

    missed: int
    late: list[tuple[datetime, float]]
    overdue_seconds: float | None


def tolerance(period: float) -> float:
    """How late a fire may be before it is flagged: a quarter period, 1-60 s."""
    return max(1.0, min(60.0, period / 4))


def check_fires(
    schedule: dict[str, Any],
    runs: Sequence[datetime],
    *,
    timezone: str,
    now: datetime,
    enabled: bool,
    next_run_at: datetime | None,
) -> FireCheck:
    """Missed fires (expected between two recorded runs, none happened), late runs
    (sent more than the tolerance after their due time) and, for an enabled entry whose
    due time has passed without a send, how overdue it is. ``runs``: send times, any order."""
    period = period_seconds(schedule, timezone=timezone, now=now)
    if period is None or period <= 0:
        return FireCheck(0, [], None)
    tol = tolerance(period)
    ordered = sorted(runs)
    tz = ZoneInfo(timezone)
    missed = 0
    late: list[tuple[datetime, float]] = []
    for earlier, later in zip(ordered, ordered[1:], strict=False):
        gap = (later - earlier).total_seconds()
        if schedule.get("type") == "interval":
            elapsed = int((gap + tol) // period)  # whole periods between the two sends
            missed += max(0, elapsed - 1)
            if elapsed == 1 and gap > period + tol:
                late.append((later, gap - period))
        else:
            due_earlier = previous_fire_time(schedule, tz, earlier)
            due = previous_fire_time(schedule, tz, later)
            if due is None or due_earlier is None:
                continue
            delay = (later - due).total_seconds()
            if delay > tol:
                late.append((later, delay))
            between = _cron_after(str(schedule["value"]), tz, due_earlier, 1000)
            missed += sum(1 for t in between if t < due)
    overdue = None
    if enabled and next_run_at is not None and (now - next_run_at).total_seconds() > tol:
        overdue = (now - next_run_at).total_seconds()
    return FireCheck(missed, late, overdue)
