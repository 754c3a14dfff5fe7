"""Parse, validate and describe periodic-task schedules (cron, interval, once).

Schedules become Celery/RedBeat schedule objects so RedBeat can store them in Redis as
JSON; ``once`` is a one-occurrence RedBeat ``rrule`` (RedBeat's JSON codec knows it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any, Literal
from zoneinfo import ZoneInfo

from celery.schedules import crontab, crontab_parser, schedule
from cron_descriptor import ExpressionDescriptor, Options
from redbeat.decoder import RedBeatJSONEncoder
from redbeat.schedules import rrule

from ._errors import InvalidRequestError, InvalidScheduleError
from ._limits import MAX_INTERVAL, MIN_INTERVAL, check_seconds, check_time, shown

ScheduleType = Literal["cron", "interval", "once"]
SCHEDULE_TYPES: tuple[str, ...] = ("cron", "interval", "once")

#: crontab fields in the order of a 5-field cron string, with their valid ranges.
CRON_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("minute", 60, 0),
    ("hour", 24, 0),
    ("day_of_month", 31, 1),
    ("month_of_year", 12, 1),
    ("day_of_week", 7, 0),
)
_CRON_FIELD_NAMES = tuple(name for name, _, _ in CRON_FIELDS)
#: Longest month of each month number (February counts its leap day).
_MONTH_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}
#: Furthest ahead a ``once`` entry may be scheduled.
MAX_ONCE_AHEAD = timedelta(days=10 * 366)
#: RedBeat's JSON codec; it stores a crontab as the fields it was given, which is what we show.
_REDBEAT_ENCODER = RedBeatJSONEncoder()


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as shown to users: its type, a JSON-friendly value, and prose."""

    type: str
    value: Any
    description: str


def parse_schedule(
    schedule_type: str, value: Any, *, tz: tzinfo, now: datetime
) -> schedule | crontab | rrule:
    """Turn a user's ``(schedule_type, value)`` into a schedule object, or raise
    :class:`InvalidScheduleError` saying what is wrong and what is accepted."""
    if schedule_type == "cron":
        return _parse_cron(value)
    if schedule_type == "interval":
        return schedule(run_every=timedelta(seconds=_parse_interval(value)))
    if schedule_type == "once":
        return _parse_once(value, tz=tz, now=now)
    raise InvalidScheduleError(
        f"unknown schedule type {schedule_type!r}; accepted: {', '.join(SCHEDULE_TYPES)}",
        field="schedule_type",
    )


def _parse_cron(value: Any) -> crontab:
    if isinstance(value, str):
        parts = value.split()
        if len(parts) != 5:
            raise InvalidScheduleError(
                f"cron expression {value!r} has {len(parts)} fields; expected 5 "
                "(minute hour day-of-month month day-of-week), e.g. '*/15 * * * *'",
                field="schedule_value",
            )
        fields = dict(zip(_CRON_FIELD_NAMES, parts, strict=True))
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - set(_CRON_FIELD_NAMES))
        if unknown:
            raise InvalidScheduleError(
                f"unknown cron field(s) {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(_CRON_FIELD_NAMES)}",
                field="schedule_value",
            )
        fields = {name: str(value.get(name, "*")) for name in _CRON_FIELD_NAMES}
    else:
        raise InvalidScheduleError(
            f"cron schedule must be a 5-field string or a mapping of "
            f"{', '.join(_CRON_FIELD_NAMES)}; got {type(value).__name__}",
            field="schedule_value",
        )
    expanded: dict[str, set[int]] = {}
    for name, max_, min_ in CRON_FIELDS:
        spec = fields[name]
        try:
            expanded[name] = crontab_parser(max_, min_).parse(spec)  # what crontab expands with
        except Exception as exc:  # celery raises ValueError or its ParseException
            raise InvalidScheduleError(
                f"invalid cron {name} {spec!r}: {exc}", field="schedule_value"
            ) from exc
        if not expanded[name]:
            raise InvalidScheduleError(f"cron {name} {spec!r} matches nothing", field="schedule_value")
    if not any(
        day <= _MONTH_DAYS[month] for month in expanded["month_of_year"] for day in expanded["day_of_month"]
    ):
        raise InvalidScheduleError(
            f"cron day_of_month {fields['day_of_month']!r} with month_of_year "
            f"{fields['month_of_year']!r} never fires: none of those months has such a day",
            field="schedule_value",
        )
    return crontab(**fields)


def _parse_interval(value: Any) -> float:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) if abs(value) < 1e15 and math.isfinite(value) else math.inf
    else:
        raise InvalidScheduleError(
            f"interval must be a number of seconds or a timedelta; got {type(value).__name__}",
            field="schedule_value",
        )
    try:
        return check_seconds(
            seconds,
            field="interval",
            minimum=MIN_INTERVAL.total_seconds(),
            maximum=MAX_INTERVAL.total_seconds(),
        )
    except InvalidRequestError as exc:
        raise InvalidScheduleError(
            f"interval must be a positive number of seconds from {MIN_INTERVAL.total_seconds()} "
            f"to {int(MAX_INTERVAL.total_seconds())} (366 days); got {shown(value)}",
            field="schedule_value",
        ) from exc


def _parse_once(value: Any, *, tz: tzinfo, now: datetime) -> rrule:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidScheduleError(
                f"once time {value!r} is not an ISO 8601 datetime", field="schedule_value"
            ) from exc
    if not isinstance(value, datetime):
        raise InvalidScheduleError(
            f"once schedule needs a datetime; got {type(value).__name__}", field="schedule_value"
        )
    try:
        when = check_time(value, field="once", tz=tz, latest=now + MAX_ONCE_AHEAD)
    except InvalidRequestError as exc:
        raise InvalidScheduleError(str(exc), field="schedule_value") from exc
    if when.microsecond:
        # RedBeat stores whole seconds; round up so it never fires early.
        when = when.replace(microsecond=0) + timedelta(seconds=1)
    if when <= now:
        raise InvalidScheduleError(
            f"once time {when.isoformat()} is in the past (now {now.isoformat()}); give a future time",
            field="schedule_value",
        )
    return rrule("SECONDLY", dtstart=when, count=1)


def is_once(sched: object) -> bool:
    """True for the one-occurrence rrule that ``once`` schedules are stored as."""
    return isinstance(sched, rrule) and sched.count == 1


def describe_schedule(sched: object, *, timezone: str) -> ScheduleInfo:
    """Return the user-facing type, value and a human-readable description."""
    if isinstance(sched, rrule) and is_once(sched):
        when = sched.dtstart.astimezone(ZoneInfo(timezone))
        return ScheduleInfo("once", when.isoformat(), f"once at {when:%Y-%m-%d %H:%M:%S} ({timezone})")
    if isinstance(sched, crontab):
        stored = _REDBEAT_ENCODER.default(sched)  # the fields as the user wrote them
        expr = " ".join(str(stored[name]) for name in _CRON_FIELD_NAMES)
        return ScheduleInfo("cron", expr, f"{_describe_cron(expr)} ({timezone})")
    if isinstance(sched, schedule):
        seconds = sched.run_every.total_seconds()
        return ScheduleInfo("interval", seconds, describe_interval(seconds))
    return ScheduleInfo(type(sched).__name__, repr(sched), repr(sched))


def describe_interval(seconds: float) -> str:
    """``30`` → "every 30 seconds", ``900`` → "every 15 minutes"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"every {unit}" if count == 1 else f"every {count} {unit}s"
    if seconds == 1:
        return "every second"
    shown = int(seconds) if float(seconds).is_integer() else seconds
    return f"every {shown} seconds"


def _describe_cron(expr: str) -> str:
    options = Options()
    options.use_24hour_time_format = True
    text = str(ExpressionDescriptor(expr, options).get_description())
    text = text[:1].lower() + text[1:]
    minute, hour, dom, month, dow = expr.split()
    if dom == month == dow == "*" and text.startswith("at ") and "," not in text:
        text += " every day"
    return text
