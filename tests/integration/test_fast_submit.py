"""submit, submit_many and submit_async publish exactly what Celery's send_task publishes."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from internal.config.setting import RedisSettings, load_settings
from internal.infra.celery import build_celery_client
from pkg.celery_task import CeleryClient, InvalidPriorityError, TaskRequest
from tests.conftest import Stack
from tests.support.services import RedisDb

pytestmark = pytest.mark.integration

#: Differ between any two publishes by design: a fresh delivery tag, the Lamport clock
#: and the wall-clock time of the event.
VOLATILE_PROPERTIES = {"delivery_tag"}
VOLATILE_EVENT_FIELDS = {"clock", "timestamp"}


@pytest.fixture()
def client(redis_db: RedisDb) -> CeleryClient:
    settings = load_settings(env_file=None)
    settings.redis = RedisSettings(db=redis_db.number)
    client = build_celery_client(settings)
    client.load_tasks()
    return client


def drain(db: RedisDb) -> list[dict[str, Any]]:
    """Every task message waiting in any queue (all priority sub-queues), oldest first."""
    found = []
    for key in db.client.keys("*"):
        if db.client.type(key) == b"list" and not key.startswith(b"_kombu"):
            for raw in reversed(db.client.lrange(key, 0, -1)):
                found.append({**json.loads(raw), "_key": key.decode(errors="replace")})
            db.client.delete(key)
    return found


def normalised(message: dict[str, Any]) -> dict[str, Any]:
    message = json.loads(json.dumps(message))
    for name in VOLATILE_PROPERTIES:
        message["properties"].pop(name)
    # A relative expiry becomes an absolute time (header) and a TTL in milliseconds
    # (property) when sent, so both move between two sends; compared to the second.
    if "expiration" in message["properties"]:
        message["properties"]["expiration"] = int(message["properties"]["expiration"]) // 1000
    if message["headers"].get("expires"):
        message["headers"]["expires"] = int(datetime.fromisoformat(message["headers"]["expires"]).timestamp())
    return message


def same(left: dict[str, Any], right: dict[str, Any]) -> None:
    """Equal, allowing relative expiry to move by the seconds between two sends."""
    left, right = normalised(left), normalised(right)
    for part, key in (("properties", "expiration"), ("headers", "expires")):
        a, b = left[part].pop(key, None), right[part].pop(key, None)
        assert (a is None) == (b is None) and (a is None or abs(a - b) <= 5), (key, a, b)
    assert left == right


def same_event(left: dict[str, Any], right: dict[str, Any]) -> None:
    """The task-sent event bodies are equal but for clock, time and relative expiry."""
    a, b = (json.loads(base64.b64decode(m["body"])) for m in (left, right))
    for body in (a, b):
        for name in VOLATILE_EVENT_FIELDS:
            body.pop(name)
        if body.get("expires"):
            body["expires"] = datetime.fromisoformat(body["expires"]).timestamp()
    expires_a, expires_b = a.pop("expires", None), b.pop("expires", None)
    assert (expires_a is None) == (expires_b is None)
    assert expires_a is None or abs(expires_a - expires_b) <= 5
    assert a == b


#: ETAs are accepted up to 30 days ahead.
_LATER = datetime.now(UTC).replace(microsecond=0) + timedelta(days=10)

CASES = [
    ("math.number_sum", [1, 2], {}, {}),
    ("math.number_sum", [], {"x": 1, "y": 2}, {"priority": 7, "queue": "default"}),
    ("internal.aps_tasks.record_queue_lengths", [], {}, {}),
    (
        "math.number_sum",
        [3, 4],
        {},
        {
            "eta": _LATER,
            "expires": _LATER + timedelta(days=1),
        },
    ),
    ("math.number_sum", [5, 6], {}, {"expires": 3600.0, "priority": 0}),
]


@pytest.mark.parametrize("task, args, kwargs, options", CASES)
def test_messages_equal_send_task_field_by_field(
    client: CeleryClient, redis_db: RedisDb, unique: str, task: str, args: list, kwargs: dict, options: dict
) -> None:
    pubsub = redis_db.client.pubsub()
    pubsub.psubscribe(f"/{redis_db.number}.celeryev/*")  # pub/sub spans databases: only ours
    pubsub.get_message(timeout=1)

    def events() -> list[dict[str, Any]]:
        got, deadline = [], time.monotonic() + 1
        while time.monotonic() < deadline:
            item = pubsub.get_message(timeout=0.1)
            if item and item["type"] == "pmessage":
                got.append(json.loads(item["data"]))
        return got

    task_id = f"same-id-{unique}"
    claim = f"tasksys:task_id:{task_id}"

    def reuse() -> str:
        """The id again: caller ids are idempotency keys, so give back its claim."""
        redis_db.client.delete(claim)
        return task_id

    client.app.send_task(task, args, kwargs, task_id=task_id, **options)
    (reference,) = drain(redis_db)
    (reference_event,) = events()

    # Each path is compared twice: the first message of a shape comes from Celery's own
    # code, later ones from the template built from it.
    requests = [TaskRequest(task, args, kwargs, task_id=f"{task_id}-{n}", **options) for n in (1, 2)]
    assert (
        client.submit_many([*requests, TaskRequest(task, args, kwargs, task_id=task_id, **options)])[-1]
        == task_id
    )
    *_, bulk_template = drain(redis_db)
    *_, bulk_template_event = events()
    assert client.submit_many([TaskRequest(task, args, kwargs, task_id=reuse(), **options)]) == [task_id]
    (bulk,) = drain(redis_db)
    (bulk_event,) = events()

    assert [client.submit(task, args, kwargs, task_id=reuse(), **options).id for _ in range(2)] == [
        task_id
    ] * 2
    plain, plain_template = drain(redis_db)
    plain_event, plain_template_event = events()

    async def send_async() -> list[str]:
        try:
            return [
                await client.submit_async(task, args, kwargs, task_id=reuse(), **options) for _ in range(2)
            ]
        finally:
            await client.aclose()

    assert asyncio.run(send_async()) == [task_id, task_id]
    single, single_template = drain(redis_db)
    single_event, single_template_event = events()
    pubsub.close()

    assert reference["headers"]["task"] == task and reference["headers"]["id"] == task_id
    for message in (bulk, bulk_template, plain, plain_template, single, single_template):
        assert message["_key"] == reference["_key"]  # same queue and priority sub-queue
        same(message, reference)
        assert message["properties"]["delivery_tag"] != reference["properties"]["delivery_tag"]
    assert reference_event["properties"]["delivery_info"]["routing_key"] == "task.sent"
    for event in (
        bulk_event,
        bulk_template_event,
        plain_event,
        plain_template_event,
        single_event,
        single_template_event,
    ):
        same({**event, "body": ""}, {**reference_event, "body": ""})
        same_event(event, reference_event)


def test_bulk_and_async_tasks_run_on_a_real_worker(stack: Stack) -> None:
    from internal.infra.celery import celery_client as client

    ids = client.submit_many(
        [TaskRequest("math.number_sum", (i, i)) for i in range(300)]
        + [{"task_name": "math.number_sum", "kwargs": {"x": 1, "y": 1}, "priority": 9}],
        chunk_size=64,
    )
    assert len(set(ids)) == 301

    async def one() -> str:
        try:
            return await client.submit_async("math.number_sum", (20, 22))
        finally:
            await client.aclose()

    async_id = asyncio.run(one())
    results = [client.get_result(task_id, timeout=60) for task_id in ids]
    assert results == [2 * i for i in range(300)] + [2]
    assert client.get_result(async_id, timeout=30) == 42
    assert set(client.get_statuses([*ids, async_id]).values()) == {"SUCCESS"}


def test_bulk_validates_everything_before_sending(client: CeleryClient, redis_db: RedisDb) -> None:
    requests = [TaskRequest("math.number_sum", (1, 2)) for _ in range(5)]
    requests.insert(3, TaskRequest("math.number_sum", (1, 2), priority=12))
    with pytest.raises(InvalidPriorityError):
        client.submit_many(requests)
    assert redis_db.client.dbsize() == 0


def test_bulk_with_links_falls_back_to_send_task(client: CeleryClient, redis_db: RedisDb) -> None:
    link = client.signature("math.number_sum", (1,))
    (task_id,) = client.submit_many([TaskRequest("math.number_sum", (1, 2), options={"link": link})])
    (message,) = drain(redis_db)
    assert message["headers"]["id"] == task_id
    body = json.loads(base64.b64decode(message["body"]))
    assert body[2]["callbacks"][0]["task"] == "math.number_sum"


def test_async_eta_uses_client_timezone_for_naive_times(client: CeleryClient, redis_db: RedisDb) -> None:
    eta = datetime.now() + timedelta(hours=1)

    async def send() -> str:
        try:
            return await client.submit_async("math.number_sum", (1, 1), eta=eta)
        finally:
            await client.aclose()

    asyncio.run(send())
    (message,) = drain(redis_db)
    assert message["headers"]["eta"].endswith("+08:00")
