"""Every rejected input raises a ValueError naming the problem and writes nothing."""

from __future__ import annotations

import decimal
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

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
    TaskIdInUseError,
    TaskRequest,
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
    ({"countdown": -5}, InvalidRequestError, "countdown must be a finite number of seconds >= 0"),
    ({"countdown": 1e12}, InvalidRequestError, "and <= 2592000; got 1000000000000.0"),
    ({"countdown": float("nan")}, InvalidRequestError, "countdown must be a finite number"),
    ({"countdown": 10**400}, InvalidRequestError, "countdown must be a finite number"),
    ({"countdown": 5, "eta": in_an_hour()}, InvalidRequestError, "give countdown or eta, not both"),
    ({"eta": "tomorrow"}, InvalidRequestError, "eta must be a datetime"),
    ({"expires": 0}, InvalidRequestError, "expires must be a finite number of seconds > 0"),
    ({"expires": 1e12}, InvalidRequestError, "expires must be a finite number of seconds > 0"),
    ({"expires": 1e300}, InvalidRequestError, "expires must be a finite number of seconds > 0"),
    ({"expires": "soon"}, InvalidRequestError, "expires must be a finite number of seconds"),
    (
        {"countdown": 2592000, "expires": datetime(9999, 12, 31)},
        InvalidRequestError,
        "expires must be between 1970-01-01 and",
    ),
    ({"eta": datetime(1, 1, 1)}, InvalidRequestError, "eta must be between 1970-01-01 and"),
    ({"eta": datetime(9999, 12, 31, 23, 59)}, InvalidRequestError, "eta must be between 1970-01-01 and"),
    ({"args": [float("nan"), 1]}, InvalidArgumentsError, "args[0] is nan, which is not JSON"),
    ({"args": [1, float("inf")]}, InvalidArgumentsError, "args[1] is inf, which is not JSON"),
    ({"args": [1, 2, 3]}, InvalidArgumentsError, "math.number_sum takes (x, y); got 3 positional"),
    ({"args": [], "kwargs": {"x": 1}}, InvalidArgumentsError, "missing a required argument: 'y'"),
    ({"args": [], "kwargs": {1: 2}}, InvalidArgumentsError, "kwargs keys must be strings"),
    ({"task_id": "a\nb"}, InvalidRequestError, "task_id may contain only letters, digits and _ . : -"),
    ({"task_id": "x\x1b[31m"}, InvalidRequestError, "task_id may contain only letters"),
    ({"queue": "celery-task-meta-0123"}, InvalidRequestError, "names starting with 'celery-task-meta-'"),
    ({"queue": "unacked"}, InvalidRequestError, "queue 'unacked' is reserved"),
    ({"queue": "unacked_index"}, InvalidRequestError, "is reserved"),
    ({"queue": "tasksys:revoked"}, InvalidRequestError, "names starting with 'tasksys:'"),
    ({"queue": "redbeat::lock"}, InvalidRequestError, "names starting with 'redbeat:'"),
    ({"queue": "_kombu.binding.default"}, InvalidRequestError, "names starting with '_kombu'"),
    ({"queue": "abc.reply.celery.pidbox"}, InvalidRequestError, "remote-control queues"),
    ({"queue": "has space"}, InvalidRequestError, "queue must be at most 200 letters, digits"),
    ({"queue": "q" * 201}, InvalidRequestError, "queue must be at most 200 letters"),
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


def nested(depth: int) -> list[Any]:
    value: list[Any] = [1]
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [33, 500, 975, 5000])
def test_deep_nesting_is_refused_before_anything_is_sent(
    client: CeleryClient, redis_db: RedisDb, depth: int
) -> None:
    before = snapshot(redis_db)
    with pytest.raises(InvalidArgumentsError, match="nested more than 32 levels deep"):
        client.submit("math.number_sum", [nested(depth), 1])
    with pytest.raises(InvalidArgumentsError, match="nested more than 32 levels deep"):
        client.submit("math.number_sum", kwargs={"x": {"a": nested(depth)}, "y": 1})
    with pytest.raises(InvalidArgumentsError, match="nested more than 32 levels deep"):
        client.add_periodic_task("math.number_sum", "interval", 10, name="deep", args=[nested(depth), 1])
    assert snapshot(redis_db) == before
    client.submit("math.number_sum", [nested(32), 1])  # the limit itself is accepted


def test_naive_times_are_read_in_the_client_timezone(client: CeleryClient, redis_db: RedisDb) -> None:
    """With TIMEZONE Asia/Shanghai a naive 22:05 is 22:05+08:00, not 22:05 UTC."""
    tomorrow = (datetime.now(ZoneInfo("Asia/Shanghai")) + timedelta(days=1)).replace(tzinfo=None)
    naive = tomorrow.replace(hour=22, minute=5, second=0, microsecond=0)
    task_id = client.submit("math.number_sum", [1, 2], eta=naive, expires=naive + timedelta(hours=1)).id
    (key,) = [k for k in redis_db.client.keys("default*") if not k.startswith(b"_kombu")]
    message = json.loads(redis_db.client.lindex(key, 0))
    assert message["headers"]["id"] == task_id
    assert message["headers"]["eta"] == naive.isoformat() + "+08:00"
    assert message["headers"]["expires"] == (naive + timedelta(hours=1)).isoformat() + "+08:00"
    entry = client.add_periodic_task("math.number_sum", "once", naive, name="naive-once", args=[1, 2])
    assert client.get_periodic_task(entry)["schedule"]["value"] == naive.isoformat() + "+08:00"


def test_a_caller_task_id_is_an_idempotency_key(client: CeleryClient, redis_db: RedisDb) -> None:
    first = client.submit("math.number_sum", [1, 2], task_id="dup-1", countdown=60)
    assert first.id == "dup-1"
    before = snapshot(redis_db)
    with pytest.raises(TaskIdInUseError, match="already submitted") as info:
        client.submit("math.number_sum", [5, 9], task_id="dup-1")
    assert isinstance(info.value, ValueError) and info.value.task_id == "dup-1"
    with pytest.raises(TaskIdInUseError):
        client.submit_many(
            [
                TaskRequest("math.number_sum", (1, 1), task_id="fresh-1"),
                TaskRequest("math.number_sum", (1, 1), task_id="dup-1"),
            ]
        )
    with pytest.raises(InvalidRequestError, match="unique within one call"):
        client.submit_many([TaskRequest("math.number_sum", (1, 1), task_id="x-1")] * 2)
    assert snapshot(redis_db) == before  # "fresh-1" was claimed and given back

    # A stored result (e.g. from a task sent by another tool) and a revoke count too.
    client.app.backend.store_result("done-1", 3, "SUCCESS")
    with pytest.raises(TaskIdInUseError, match="stored result"):
        client.submit("math.number_sum", [5, 9], task_id="done-1")
    client.revoke("revoked-1")
    with pytest.raises(TaskIdInUseError, match="revoked"):
        client.submit("math.number_sum", [5, 9], task_id="revoked-1")
    assert client.submit("math.number_sum", [1, 1], task_id="fresh-1").id == "fresh-1"


def test_concurrent_submits_of_one_id_send_exactly_once(client: CeleryClient, redis_db: RedisDb) -> None:
    def attempt(_: int) -> str:
        try:
            return client.submit("math.number_sum", [1, 2], task_id="race-1", queue="race").id
        except TaskIdInUseError:
            return "refused"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(attempt, range(32)))
    assert outcomes.count("race-1") == 1 and outcomes.count("refused") == 31
    assert client.queue_lengths(["race"]) == {"race": 1}


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
    ("interval", 0, "interval must be a positive number of seconds from 0.001 to 31622400 (366 days); got 0"),
    ("interval", -30, "(366 days); got -30"),
    ("interval", timedelta(seconds=-1), "interval must be a positive number of seconds"),
    ("interval", "30", "interval must be a number of seconds or a timedelta; got str"),
    ("interval", 1e12, "interval must be a positive number of seconds from 0.001 to 31622400"),
    ("interval", 1e-9, "interval must be a positive number of seconds from 0.001"),
    ("interval", float("nan"), "interval must be a positive number"),
    ("interval", 10**400, "interval must be a positive number"),
    ("interval", timedelta(days=999_999), "interval must be a positive number"),
    ("cron", "0 0 30 2 *", "never fires"),
    ("cron", "0 0 31 4,6,9,11 *", "never fires"),
    ("once", datetime(1, 1, 1), "once must be between 1970-01-01 and"),
    ("once", "0001-01-01T00:00:00", "once must be between 1970-01-01 and"),
    ("once", datetime(9999, 12, 31), "once must be between 1970-01-01 and"),
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
        ({"name": ":lock"}, InvalidRequestError, "is not accepted"),
        ({"name": ":schedule"}, InvalidRequestError, "is not accepted"),
        ({"name": ":statics"}, InvalidRequestError, "is not accepted"),
        ({"name": " padded"}, InvalidRequestError, "no surrounding spaces"),
        ({"name": "padded "}, InvalidRequestError, "no surrounding spaces"),
        ({"name": "line\nbreak"}, InvalidRequestError, "is not accepted"),
        ({"queue": "celery-task-meta-x"}, InvalidRequestError, "is reserved"),
        ({"args": [1, 2, 3]}, InvalidArgumentsError, "math.number_sum takes (x, y)"),
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


def test_names_cannot_address_the_schedulers_own_keys(client: CeleryClient, redis_db: RedisDb) -> None:
    """``:schedule`` / ``:lock`` / ``:statics`` would be ``redbeat::schedule`` & co."""
    client.add_periodic_task("math.number_sum", "interval", 60, name="keep", args=[1, 2])
    redis_db.client.set("redbeat::lock", "beat-lock-token")
    before = snapshot(redis_db)
    for name in (":schedule", ":lock", ":statics"):
        for call in (
            client.get_periodic_task,
            client.remove_periodic_task,
            client.enable_periodic_task,
            client.disable_periodic_task,
        ):
            with pytest.raises(InvalidRequestError, match="is not accepted"):
                call(name)
    assert snapshot(redis_db) == before
    assert [e["name"] for e in client.list_periodic_tasks()] == ["keep"]


def test_unknown_tasks_are_refused_without_load_tasks(redis_db: RedisDb) -> None:
    """The include modules are importable: the registry is loaded on first check."""
    settings = load_settings(env_file=None)
    settings.redis = RedisSettings(db=redis_db.number)
    fresh = build_celery_client(settings)
    before = snapshot(redis_db)
    with pytest.raises(UnknownTaskError, match="unknown task 'no.such.task'"):
        fresh.add_periodic_task("no.such.task", "interval", 10)
    assert snapshot(redis_db) == before


def test_periodic_tasks_are_paginated(client: CeleryClient) -> None:
    client.add_periodic_tasks(
        [
            {
                "task_name": "math.number_sum",
                "schedule_type": "interval",
                "schedule_value": 60,
                "name": f"page-{i:03}",
                "args": [i, i],
            }
            for i in range(250)
        ]
    )
    total, first = client.periodic_tasks_page(limit=100)
    assert total == 250 and [e["name"] for e in first] == [f"page-{i:03}" for i in range(100)]
    total, last = client.periodic_tasks_page(limit=100, offset=200)
    assert [e["name"] for e in last] == [f"page-{i:03}" for i in range(200, 250)]
    assert client.periodic_tasks_page(limit=10, offset=10**9) == (250, [])
    for limit, offset in ((0, 0), (1001, 0), (10, -1), (10, 2**63 - 1), (True, 0)):
        with pytest.raises(InvalidRequestError):
            client.periodic_tasks_page(limit=limit, offset=offset)
    with pytest.raises(InvalidRequestError):
        client.dead_letters(offset=9223372036854775807)


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
