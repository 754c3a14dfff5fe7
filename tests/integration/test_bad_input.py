"""Every rejected input raises a ValueError naming the problem and writes nothing."""

from __future__ import annotations

import decimal
from datetime import datetime, timedelta
from typing import Any

import pytest

from internal.config.setting import RedisSettings, load_settings
from internal.infra.celery import build_celery_client
from pkg.celery_task import (
    CeleryClient,
    InvalidArgumentsError,
    InvalidPriorityError,
    InvalidRequestError,
    InvalidScheduleError,
    PeriodicTaskConflictError,
    PeriodicTaskNotFoundError,
    UnknownTaskError,
)
from tests.support.services import RedisDb

pytestmark = pytest.mark.integration


@pytest.fixture()
def client(redis_db: RedisDb) -> CeleryClient:
    settings = load_settings(env_file=None)
    settings.redis = RedisSettings(db=redis_db.number)
    client = build_celery_client(settings)
    client.load_tasks()
    return client


def snapshot(db: RedisDb) -> dict[bytes, Any]:
    """Every key with its dumped value: any write shows up as a difference."""
    return {key: db.client.dump(key) for key in db.client.keys("*")}


def in_an_hour() -> datetime:
    return datetime.now().astimezone() + timedelta(hours=1)


SUBMIT_CASES = [
    ({"task_name": "no.such.task"}, UnknownTaskError, "unknown task 'no.such.task'"),
    ({"task_name": ""}, InvalidRequestError, "task name must be a non-empty string"),
    ({"args": [object()]}, InvalidArgumentsError, "args[0] of type object cannot be sent as JSON"),
    ({"kwargs": {"x": {1, 2}}}, InvalidArgumentsError, "kwargs['x'] of type set cannot be sent as JSON"),
    ({"priority": 10}, InvalidPriorityError, "priority must be an integer from 0 (lowest) to 9 (highest)"),
    ({"priority": -1}, InvalidPriorityError, "got -1"),
    ({"priority": "high"}, InvalidPriorityError, "got 'high'"),
    ({"priority": True}, InvalidPriorityError, "got True"),
    ({"countdown": -5}, InvalidRequestError, "countdown must be a number of seconds >= 0"),
    ({"countdown": 5, "eta": in_an_hour()}, InvalidRequestError, "give countdown or eta, not both"),
    ({"eta": "tomorrow"}, InvalidRequestError, "eta must be a datetime"),
    ({"expires": 0}, InvalidRequestError, "expires must be a number of seconds > 0 or a datetime"),
    ({"task_id": ""}, InvalidRequestError, "task_id must be a non-empty string"),
    ({"task_id": "x" * 300}, InvalidRequestError, "at most 255 characters"),
    ({"queue": " "}, InvalidRequestError, "queue must be a non-empty string"),
    (
        {"time_limit": 10},
        InvalidRequestError,
        "time_limit 10 s must exceed the soft time limit in force (300",
    ),
    (
        {"time_limit": 5, "soft_time_limit": 5},
        InvalidRequestError,
        "must exceed the soft time limit in force (5 s)",
    ),
    ({"soft_time_limit": -1}, InvalidRequestError, "soft_time_limit must be a number of seconds > 0"),
]


@pytest.mark.parametrize("overrides, error, message", SUBMIT_CASES)
def test_submit_rejects_bad_input_and_sends_nothing(
    client: CeleryClient, redis_db: RedisDb, overrides: dict[str, Any], error: type, message: str
) -> None:
    call: dict[str, Any] = {"task_name": "math.number_sum", "args": [1, 2], **overrides}
    before = snapshot(redis_db)
    with pytest.raises(error) as info:
        client.submit(call.pop("task_name"), **call)
    assert isinstance(info.value, ValueError)
    assert message in str(info.value)
    assert snapshot(redis_db) == before


def test_decimal_and_datetime_arguments_are_json_serialisable(
    client: CeleryClient, redis_db: RedisDb
) -> None:
    client.submit("math.number_sum", [decimal.Decimal("1.5"), 2], kwargs={}, countdown=0)
    assert client.queue_lengths(["default"]) == {"default": 1}


SCHEDULE_CASES = [
    ("weekly", "* * * * *", "unknown schedule type 'weekly'; accepted: cron, interval, once"),
    ("cron", "61 * * * *", "invalid cron minute '61'"),
    ("cron", "* 24 * * *", "invalid cron hour '24'"),
    ("cron", "* * 0 * *", "invalid cron day_of_month '0'"),
    ("cron", "* * * 13 *", "invalid cron month_of_year '13'"),
    ("cron", "* * * * funday", "invalid cron day_of_week 'funday'"),
    ("cron", "*/15 * * *", "has 4 fields; expected 5"),
    ("cron", {"minutes": "5"}, "unknown cron field(s) 'minutes'"),
    ("cron", 15, "cron schedule must be a 5-field string or a mapping"),
    ("interval", 0, "interval must be a positive number of seconds; got 0"),
    ("interval", -30, "interval must be a positive number of seconds; got -30"),
    ("interval", timedelta(seconds=-1), "interval must be a positive number of seconds"),
    ("interval", "30", "interval must be a number of seconds or a timedelta; got str"),
    ("once", datetime(2020, 1, 1, 8, 0), "is in the past"),
    ("once", "not a date", "is not an ISO 8601 datetime"),
]


@pytest.mark.parametrize("schedule_type, value, message", SCHEDULE_CASES)
def test_add_periodic_task_rejects_bad_schedules_and_writes_nothing(
    client: CeleryClient, redis_db: RedisDb, schedule_type: str, value: Any, message: str
) -> None:
    before = snapshot(redis_db)
    with pytest.raises(InvalidScheduleError) as info:
        client.add_periodic_task("math.number_sum", schedule_type, value, name="bad", args=[1, 2])
    assert isinstance(info.value, ValueError)
    assert message in str(info.value)
    assert snapshot(redis_db) == before


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"task_name": "no.such.task"}, UnknownTaskError, "unknown task 'no.such.task'"),
        ({"args": [object()]}, InvalidArgumentsError, "args[0] of type object"),
        ({"options": {"priority": 12}}, InvalidPriorityError, "got 12"),
        ({"name": ""}, InvalidRequestError, "name must be a non-empty string"),
        ({"queue": ""}, InvalidRequestError, "queue must be a non-empty string"),
        ({"name": "task_heartbeat_30s"}, PeriodicTaskConflictError, "it is a static entry"),
    ],
)
def test_add_periodic_task_rejects_bad_entries_and_writes_nothing(
    client: CeleryClient, redis_db: RedisDb, kwargs: dict[str, Any], error: type, message: str
) -> None:
    call: dict[str, Any] = {"task_name": "math.number_sum", "args": [1, 2], "name": "entry", **kwargs}
    before = snapshot(redis_db)
    with pytest.raises(error, match=None) as info:
        client.add_periodic_task(call.pop("task_name"), "interval", 10, **call)
    assert message in str(info.value)
    assert snapshot(redis_db) == before


def test_unknown_periodic_task_names(client: CeleryClient, redis_db: RedisDb) -> None:
    before = snapshot(redis_db)
    with pytest.raises(PeriodicTaskNotFoundError, match="no periodic task named 'ghost'"):
        client.get_periodic_task("ghost")
    with pytest.raises(PeriodicTaskNotFoundError):
        client.enable_periodic_task("ghost")
    with pytest.raises(PeriodicTaskNotFoundError):
        client.disable_periodic_task("ghost")
    assert client.remove_periodic_task("ghost") is False
    with pytest.raises(PeriodicTaskConflictError, match="disable it instead"):
        client.remove_periodic_task("task_heartbeat_30s")
    assert snapshot(redis_db) == before


def test_canvas_rejects_bad_signatures_and_sends_nothing(client: CeleryClient, redis_db: RedisDb) -> None:
    before = snapshot(redis_db)
    with pytest.raises(UnknownTaskError):
        client.chain(client.signature("math.number_sum", (1, 2)), "no.such.task")
    with pytest.raises(InvalidArgumentsError):
        client.signature("math.number_sum", (object(), 1))
    with pytest.raises(InvalidPriorityError):
        client.signature("math.number_sum", (1, 1), priority=11)
    with pytest.raises(InvalidRequestError, match="a workflow needs at least one task"):
        client.group()
    assert snapshot(redis_db) == before


def test_route_priority_10_is_clamped_to_9() -> None:
    client = CeleryClient(
        "clamp", "redis://127.0.0.1:6379/15", task_routes={"a.*": {"queue": "q", "priority": 10}}
    )
    assert client.app.conf.task_routes == {"a.*": {"queue": "q", "priority": 9}}


def test_add_periodic_tasks_in_bulk(client: CeleryClient, redis_db: RedisDb) -> None:
    specs = [
        {
            "task_name": "math.number_sum",
            "schedule_type": "cron",
            "schedule_value": "0 3 * * *",
            "name": f"bulk-{i}",
            "args": [i, i],
        }
        for i in range(300)
    ]
    assert client.add_periodic_tasks(specs) == [f"bulk-{i}" for i in range(300)]
    entries = {e["name"]: e for e in client.list_periodic_tasks()}
    assert entries["bulk-7"]["args"] == [7, 7] and entries["bulk-7"]["schedule"]["value"] == "0 3 * * *"
    assert entries["bulk-7"]["next_run_at"].endswith("03:00:00+08:00")

    before = snapshot(redis_db)
    with pytest.raises(PeriodicTaskConflictError):
        client.add_periodic_tasks([{**specs[0], "name": "fresh"}, {**specs[0], "name": "task_heartbeat_30s"}])
    with pytest.raises(PeriodicTaskConflictError, match="exists"):
        client.add_periodic_tasks([{**specs[0], "name": "fresh"}, specs[1]], replace=False)
    with pytest.raises(InvalidRequestError, match="unique"):
        client.add_periodic_tasks([specs[0], specs[0]])
    with pytest.raises(InvalidScheduleError):
        client.add_periodic_tasks([{**specs[0], "name": "fresh"}, {**specs[1], "schedule_value": "nope"}])
    assert snapshot(redis_db) == before
