"""Property-based tests of every validator a caller's input meets: whatever hypothesis
generates is either accepted (and then safe: inside its namespace, bounded, finite) or
refused with a ``ValueError`` subclass naming the field; nothing else ever escapes."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from pkg.celery_task import (
    ENTRY_NAME_PATTERN,
    ID_PATTERN,
    MAX_ARGUMENT_DEPTH,
    InvalidRequestError,
    escape_control,
    parse_schedule,
)
from pkg.celery_task._limits import (
    check_entry_name,
    check_json_value,
    check_queue_name,
    check_seconds,
    check_task_id,
    check_time,
)

TZ = ZoneInfo("Asia/Shanghai")
RESERVED = ("celery-task-meta-", "_kombu", "unacked", "tasksys:", "redbeat:")
#: Keys RedBeat keeps for itself, which an entry name must never produce.
SCHEDULER_KEYS = {"redbeat::schedule", "redbeat::statics", "redbeat::lock"}

hostile_text = st.one_of(
    st.text(max_size=300),
    st.sampled_from(
        [
            ":lock",
            ":schedule",
            ":statics",
            " padded",
            "padded ",
            "a\nb",
            "x\x1b[31m",
            "celery-task-meta-1",
            "unacked_index",
            "tasksys:revoked",
            "redbeat::lock",
            "q" * 201,
            "",
            "\u202e",
        ]
    ),
)


def _refused(call: Any, *args: Any, **kwargs: Any) -> InvalidRequestError | None:
    try:
        call(*args, **kwargs)
    except InvalidRequestError as exc:
        assert isinstance(exc, ValueError) and exc.field
        return exc
    return None


@given(hostile_text)
def test_task_ids(value: str) -> None:
    error = _refused(check_task_id, value)
    ok = bool(re.fullmatch(ID_PATTERN, value)) and len(value) <= 255
    assert (error is None) == ok


@given(hostile_text)
def test_queue_names_never_start_like_an_internal_key(value: str) -> None:
    error = _refused(check_queue_name, value, RESERVED)
    if error is None:
        assert re.fullmatch(ID_PATTERN, value) and len(value) <= 200
        assert not value.startswith(RESERVED)


@given(hostile_text)
def test_entry_names_stay_in_their_namespace(value: str) -> None:
    error = _refused(check_entry_name, value)
    if error is None:
        assert re.fullmatch(ENTRY_NAME_PATTERN, value) and 0 < len(value) <= 200
        assert value == value.strip() and not value.startswith(":")
        assert "redbeat:" + value not in SCHEDULER_KEYS
        assert escape_control(value) == value


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=40,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


@given(json_values, st.integers(min_value=1, max_value=6))
def test_json_values_accepted_exactly_when_finite_and_shallow(value: Any, limit: int) -> None:
    error = _refused(check_json_value, value, field="args", max_depth=limit)
    assert (error is None) == (_finite(value) and _depth(value) <= limit)


@given(json_values, st.integers(min_value=1, max_value=6))
def test_without_finite_only_depth_is_checked(value: Any, limit: int) -> None:
    error = _refused(check_json_value, value, field="args", max_depth=limit, finite=False)
    assert (error is None) == (_depth(value) <= limit)


@given(st.integers(min_value=MAX_ARGUMENT_DEPTH + 1, max_value=100_000))
@settings(max_examples=10)
def test_any_depth_is_refused_without_recursion(depth: int) -> None:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    assert _refused(check_json_value, [value], field="args", members=True) is not None


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)


@given(numbers)
def test_seconds_are_finite_and_in_range(value: Any) -> None:
    error = _refused(check_seconds, value, field="countdown", minimum=0, maximum=2592000)
    if error is None:
        assert not isinstance(value, bool) and math.isfinite(float(value)) and 0 <= value <= 2592000


@given(st.datetimes(timezones=st.none() | st.timezones()))
def test_times_are_aware_and_in_range(value: datetime) -> None:
    latest = datetime.now(UTC) + timedelta(days=30)
    try:
        moment = check_time(value, field="eta", tz=TZ, latest=latest)
    except InvalidRequestError:
        return
    assert moment.tzinfo is not None
    assert datetime(1970, 1, 1, tzinfo=UTC) <= moment <= latest
    if value.tzinfo is None:
        assert moment.replace(tzinfo=None) == value  # naive = wall clock in TZ


cron_fields = st.one_of(
    st.sampled_from(
        ["*", "*/15", "0", "30", "1-5", "mon-fri", "29", "30", "31", "2", "4,6", "61", "-1", "x"]
    ),
    st.text(max_size=4),
)


@given(st.lists(cron_fields, min_size=5, max_size=5))
@settings(max_examples=200)
def test_cron_either_fires_or_is_refused(parts: list[str]) -> None:
    now = datetime.now(TZ)
    expression = " ".join(parts)
    try:
        schedule = parse_schedule("cron", expression, tz=TZ, now=now)
    except ValueError:
        return
    assert schedule.remaining_estimate(now) is not None


@given(numbers)
def test_intervals_store_what_was_asked(value: Any) -> None:
    now = datetime.now(TZ)
    try:
        schedule = parse_schedule("interval", value, tz=TZ, now=now)
    except ValueError:
        return
    assert 0.001 <= schedule.run_every.total_seconds() <= 366 * 86400
    assert math.isclose(schedule.run_every.total_seconds(), float(value), rel_tol=1e-6, abs_tol=1e-6)


@given(st.text(max_size=50))
def test_escaped_text_has_no_control_characters(text: str) -> None:
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", escape_control(text))
