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
    for name in ("expires", "eta"):
        if message["headers"].get(name):
            message["headers"][name] = int(datetime.fromisoformat(message["headers"][name]).timestamp())
    return message


def same(left: dict[str, Any], right: dict[str, Any], slack: float = 5) -> None:
    """Equal, allowing relative expiry and countdowns to move by the seconds between two
    sends (at most ``slack``)."""
    left, right = normalised(left), normalised(right)
    for part, key in (("properties", "expiration"), ("headers", "expires"), ("headers", "eta")):
        a, b = left[part].pop(key, None), right[part].pop(key, None)
        assert (a is None) == (b is None) and (a is None or abs(a - b) <= slack), (key, a, b)
    assert left == right


def same_event(left: dict[str, Any], right: dict[str, Any]) -> None:
    """The task-sent event bodies are equal but for clock, time and relative expiry."""
    a, b = (json.loads(base64.b64decode(m["body"])) for m in (left, right))
    for body in (a, b):
        for name in VOLATILE_EVENT_FIELDS:
            body.pop(name)
        for name in ("expires", "eta"):
            if body.get(name):
                body[name] = datetime.fromisoformat(body[name]).timestamp()
    for name in ("expires", "eta"):
        value_a, value_b = a.pop(name, None), b.pop(name, None)
        assert (value_a is None) == (value_b is None), name
        assert value_a is None or abs(value_a - value_b) <= 5, name
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
    ("math.number_sum", [7, 8], {}, {"countdown": 30}),
    # the task's own defaults: expires 600 s, time limits 30/20 s
    ("tests.defaults", [1], {}, {}),
    ("tests.defaults", [2], {}, {"priority": 2, "queue": "default", "expires": 60}),
]


@pytest.mark.parametrize("task, args, kwargs, options", CASES)
def test_messages_equal_send_task_field_by_field(
    client: CeleryClient, redis_db: RedisDb, unique: str, task: str, args: list, kwargs: dict, options: dict
) -> None:
    compare_every_path(client, redis_db, unique, task, args, kwargs, options)


def compare_every_path(
    client: CeleryClient,
    redis_db: RedisDb,
    unique: str,
    task: str,
    args: list,
    kwargs: dict,
    options: dict,
    *,
    falls_back: bool = False,
) -> None:
    """Send one task with ``send_task``, then with submit_many, submit and submit_async
    (twice each, with the caller's task id), and compare every message and event.

    With ``falls_back``, submit_async runs ``send_task`` in a thread, whose
    ``reply_to`` (Celery's id of the sending thread) differs by design."""
    began = time.monotonic()
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
    if falls_back:
        for message in (single, single_template):
            message["properties"]["reply_to"] = reference["properties"]["reply_to"]
    slack = time.monotonic() - began + 2  # every send came within this (a slow machine)
    for message in (bulk, bulk_template, plain, plain_template, single, single_template):
        assert message["_key"] == reference["_key"]  # same queue and priority sub-queue
        same(message, reference, slack)
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
        same({**event, "body": ""}, {**reference_event, "body": ""}, slack)
        same_event(event, reference_event)


def test_explicit_expires_none_clears_the_task_default_as_in_send_task(
    client: CeleryClient, redis_db: RedisDb, unique: str
) -> None:
    client.app.send_task("tests.defaults", [1], task_id=f"ref-{unique}", expires=None)
    (reference,) = drain(redis_db)
    assert reference["headers"]["expires"] is None and "expiration" not in reference["properties"]
    requests = [TaskRequest("tests.defaults", [1], options={"expires": None}) for _ in range(2)]
    ids = client.submit_many(requests)  # the second could come from a template
    sent = drain(redis_db)
    assert [m["headers"]["id"] for m in sent] == ids
    for message in sent:
        message["headers"]["id"] = message["headers"]["root_id"] = reference["headers"]["id"]
        message["properties"]["correlation_id"] = reference["properties"]["correlation_id"]
        message.pop("body"), reference.pop("body", None)  # argsrepr and body hold only [1]
        same(message, {**reference, "body": None} if "body" in message else reference)


def test_a_task_default_expiry_counts_from_each_send(client: CeleryClient, redis_db: RedisDb) -> None:
    """A template must not freeze the first message's absolute expiry time."""
    client.submit("tests.defaults", [1])
    time.sleep(1.5)
    client.submit("tests.defaults", [1])
    first, second = (datetime.fromisoformat(m["headers"]["expires"]) for m in drain(redis_db))
    assert 1.4 <= (second - first).total_seconds() <= 5


def test_a_router_function_sees_the_arguments_of_every_send(
    client: CeleryClient, redis_db: RedisDb, unique: str
) -> None:
    """Routes that are functions may route by argument: no template may reuse a route."""
    parked = f"by-arg-{unique}"

    def by_first_argument(name: str, args: Any, kwargs: Any, options: Any, task: Any = None) -> Any:
        return {"queue": parked} if name == "math.number_sum" and args and args[0] == 99 else None

    client.app.amqp.router.routes.insert(0, by_first_argument)
    try:
        ids = [client.submit("math.number_sum", args).id for args in ([1, 2], [99, 1], [3, 4])]
        bulk = client.submit_many([TaskRequest("math.number_sum", a) for a in ([1, 2], [99, 1])])
    finally:
        client.app.amqp.router.routes.remove(by_first_argument)
    queues = {m["headers"]["id"]: m["_key"].split("\x06\x16")[0] for m in drain(redis_db)}
    assert [queues[i] for i in ids + bulk] == ["default", parked, "default", "default", parked]


def test_an_on_task_call_hook_is_called_as_send_task_calls_it(
    client: CeleryClient, redis_db: RedisDb, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend's own on_task_call is called once per task, with the producer and id,
    whichever way the task is sent; the messages stay equal."""
    calls: list[str] = []

    def on_task_call(self: Any, producer: Any, task_id: str) -> None:
        assert producer is not None
        calls.append(task_id)

    monkeypatch.setattr(type(client.app.backend), "on_task_call", on_task_call)
    options = {"priority": 3}
    compare_every_path(client, redis_db, unique, "math.number_sum", [1, 2], {}, options, falls_back=True)
    task_id = f"same-id-{unique}"
    assert calls == [task_id] + [f"{task_id}-1", f"{task_id}-2", task_id] + [task_id] * 5


def test_with_the_redis_backend_no_result_subscription_outlives_the_result(
    client: CeleryClient, redis_db: RedisDb
) -> None:
    """RedisBackend.on_task_call subscribes to the result channel until the AsyncResult
    is collected; the fast path leaves that out, so after both nothing is subscribed."""
    consumer = client.app.backend.result_consumer
    client.app.send_task("math.number_sum", [1, 2])
    after_send_task = set(consumer.subscribed_to)
    client.submit("math.number_sum", [1, 2])
    client.submit_many([TaskRequest("math.number_sum", [1, 2])])
    assert after_send_task == set(consumer.subscribed_to) == set()
    drain(redis_db)


def test_sends_from_inside_a_running_task_equal_send_task_and_are_its_children(
    stack: Stack, unique: str
) -> None:
    """A task on a real worker sends two children with send_task, submit and
    submit_many: same messages (parent_id, root_id), and the parent's stored result
    lists them as its children in each case."""
    from internal.infra.celery import celery_client as client

    parked = f"parked-{unique}"  # no worker consumes it, so the messages stay readable
    db = stack.db.client
    sent: dict[str, tuple[str, list[str], list[dict[str, Any]]]] = {}
    try:
        for how in ("send_task", "submit", "submit_many"):
            parent = client.submit("tests.fan_out", (how, parked))
            children = client.get_result(parent.id, timeout=60)
            (key,) = db.keys(f"{parked}*")  # one priority sub-queue
            messages = [json.loads(raw) for raw in reversed(db.lrange(key, 0, -1))]
            db.delete(key)
            sent[how] = (parent.id, children, messages)
    finally:
        for key in db.keys(f"{parked}*"):
            db.delete(key)
    reference: list[dict[str, Any]] | None = None
    for how, (parent_id, children, messages) in sent.items():
        assert [m["headers"]["id"] for m in messages] == children, how
        for message in messages:
            assert message["headers"]["parent_id"] == parent_id, how
            assert message["headers"]["root_id"] == parent_id, how
        stored = client.app.backend.get_task_meta(parent_id)["children"]
        assert [child[0][0] for child in stored] == children, how
        # what may differ: the ids, and which pool process (origin, reply_to) sent them
        for message in messages:
            for name in ("id", "root_id", "parent_id", "origin"):
                message["headers"].pop(name)
            for name in ("correlation_id", "reply_to"):
                message["properties"].pop(name)
        if reference is None:
            reference = messages
        else:
            assert len(messages) == len(reference), how
            for message, expected in zip(messages, reference, strict=True):
                assert message["headers"] == expected["headers"], how
                same(message, expected)


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


def test_a_flow_key_header_takes_the_fast_path_and_equals_send_task(
    client: CeleryClient, redis_db: RedisDb, unique: str
) -> None:
    from pkg.celery_task._flow import FLOW_KEY_HEADER

    task_id = f"keyed-{unique}"
    client.app.send_task("math.number_sum", [1, 2], task_id=task_id, headers={FLOW_KEY_HEADER: "tenant-7"})
    (reference,) = drain(redis_db)
    assert reference["headers"][FLOW_KEY_HEADER] == "tenant-7"
    request = TaskRequest("math.number_sum", [1, 2], options={"flow_key": "tenant-7"})
    assert client._parts.publisher.fast_path_ok([client._parts.validator.validated(request)])
    redis_db.client.delete(f"tasksys:task_id:{task_id}")
    assert client.submit("math.number_sum", [1, 2], task_id=task_id, flow_key="tenant-7").id == task_id
    redis_db.client.delete(f"tasksys:task_id:{task_id}")
    (bulk_id,) = client.submit_many(
        [TaskRequest("math.number_sum", [1, 2], task_id=task_id, options={"flow_key": "tenant-7"})]
    )
    assert bulk_id == task_id
    for message in drain(redis_db):
        assert message["_key"] == reference["_key"]
        same(message, reference)


def test_fifty_threads_submitting_at_once_all_succeed(client: CeleryClient, redis_db: RedisDb) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(50) as pool:
        ids = list(pool.map(lambda n: client.submit("math.number_sum", [n, 1]).id, range(200)))
    assert len(set(ids)) == 200
    assert len(drain(redis_db)) == 200
