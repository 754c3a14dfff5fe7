"""Deduplicated submits against real Redis, the session's worker and the HTTP API: one
message per key under concurrent submits, and the key released when the task succeeds,
fails for good, is revoked or its TTL runs out, but not between retries."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from pkg.celery_task import BrokerUnavailableError, CeleryClient, InvalidRequestError, TaskRequest
from pkg.celery_task.worker import redis_priority_queue_keys
from tests.conftest import API_TOKEN, Api, Stack
from tests.support.procs import wait_for
from tests.support.services import RedisDb, free_port, private_redis

pytestmark = pytest.mark.integration

#: Known to the API (the fixture's CELERY_EXTRA_QUEUES) and consumed by no worker here.
PARKED = "quarantine"


def holder(db: RedisDb, key: str) -> str | None:
    value = db.client.get(f"tasksys:dedupe:{key}")
    return value.decode() if value is not None else None


def parked_messages(db: RedisDb, queue: str, key: str | None = None) -> list[dict[str, Any]]:
    """Messages waiting in ``queue`` (all priority sub-queues), those carrying ``key`` if given."""
    found = []
    for name in redis_priority_queue_keys(queue):
        for raw in db.client.lrange(name, 0, -1):
            message = json.loads(raw)
            if key is None or message["headers"].get("tasksys_dedupe") == key:
                found.append(message)
    return found


def drop_parked(db: RedisDb, queue: str) -> None:
    db.client.delete(*redis_priority_queue_keys(queue))


def test_fifty_concurrent_submits_send_one_message(
    client: CeleryClient, session_db: RedisDb, unique: str
) -> None:
    key = f"report:{unique}"
    before = client.deduplicated_counts().get("tests.sleep", 0)
    barrier = threading.Barrier(50)
    results: list[Any] = []
    lock = threading.Lock()

    def submit() -> None:
        barrier.wait()
        result = client.submit("tests.sleep", [0.1], queue=PARKED, dedupe_key=key, dedupe_ttl=60)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=submit) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert len(results) == 50
        ids = {r.id for r in results}
        assert len(ids) == 1, ids
        assert sorted(r.deduplicated for r in results) == [False] + [True] * 49
        messages = parked_messages(session_db, PARKED, key)
        assert [m["headers"]["id"] for m in messages] == list(ids)
        assert holder(session_db, key) == next(iter(ids))
        assert client.deduplicated_counts()["tests.sleep"] - before == 49
    finally:
        drop_parked(session_db, PARKED)
        for task_id in {r.id for r in results}:
            client.revoke(task_id)


def test_fifty_concurrent_http_submits_answer_one_202(api: Api, session_db: RedisDb, unique: str) -> None:
    key = f"http:{unique}"
    body = {"task": "tests.sleep", "args": [0.1], "queue": PARKED, "dedupe_key": key, "dedupe_ttl": 60}

    def metric() -> float:
        text = api.http.get("/metrics").text
        match = re.search(r'^tasksys_tasks_deduplicated_total\{task="tests.sleep"\} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0.0

    before = metric()

    async def submit_all() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with httpx.AsyncClient(base_url=api.base_url, headers=headers, timeout=30) as http:
            return await asyncio.gather(*(http.post("/api/v1/tasks", json=body) for _ in range(50)))

    answers = asyncio.run(submit_all())
    try:
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200] * 49 + [202], [a.text for a in answers if a.status_code not in (200, 202)]
        bodies = [a.json() for a in answers]
        assert len({b["task_id"] for b in bodies}) == 1
        fresh = [b for b, a in zip(bodies, answers, strict=True) if a.status_code == 202]
        assert fresh[0]["deduplicated"] is False and fresh[0]["status"] == "PENDING"
        assert all(
            b["deduplicated"] is True for b, a in zip(bodies, answers, strict=True) if a.status_code == 200
        )
        assert len(parked_messages(session_db, PARKED, key)) == 1
        assert metric() - before == 49
    finally:
        drop_parked(session_db, PARKED)
        api.http.delete(f"/api/v1/tasks/{bodies[0]['task_id']}")


def test_finished_task_releases_its_key(
    client: CeleryClient, stack: Stack, session_db: RedisDb, unique: str
) -> None:
    key = f"done:{unique}"
    first = client.submit("tests.sleep", [0.3], dedupe_key=key)
    again = client.submit("tests.sleep", [0.3], dedupe_key=key)
    assert first.deduplicated is False and again.deduplicated is True and again.id == first.id
    assert client.get_result(first.id, timeout=30) == 0.3
    wait_for(lambda: holder(session_db, key) is None, timeout=10, what="the key to be released")
    assert not session_db.client.exists(f"tasksys:dedupe-task:{first.id}")
    second = client.submit("tests.sleep", [0.1], dedupe_key=key)
    assert second.deduplicated is False and second.id != first.id
    assert client.get_result(second.id, timeout=30) == 0.1


def test_failing_task_releases_after_its_last_attempt(
    client: CeleryClient, stack: Stack, session_db: RedisDb, unique: str
) -> None:
    key = f"fails:{unique}"
    first = client.submit("tests.always_fails", [unique], dedupe_key=key)
    wait_for(lambda: client.get_status(first.id) == "FAILURE", timeout=30, what="the task to fail for good")
    wait_for(lambda: holder(session_db, key) is None, timeout=10, what="the key to be released")
    second = client.submit("tests.always_fails", [unique], dedupe_key=key)
    assert second.deduplicated is False and second.id != first.id
    client.revoke(second.id)


def test_retrying_task_keeps_its_key_between_attempts(
    client: CeleryClient, stack: Stack, session_db: RedisDb, unique: str
) -> None:
    key = f"retries:{unique}"
    counter = f"attempts:{unique}"
    first = client.submit("tests.flaky", [counter, 3], dedupe_key=key)
    samples: list[tuple[int, str, str | None]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        attempts = int(session_db.client.get(counter) or 0)
        status = client.get_status(first.id)
        samples.append((attempts, status, holder(session_db, key)))
        if status == "SUCCESS":
            break
        time.sleep(0.02)
    assert samples[-1][1] == "SUCCESS", samples[-5:]
    between = [s for s in samples if s[0] >= 1 and s[1] != "SUCCESS"]
    assert any(s[1] == "RETRY" for s in between), "no sample caught the task between attempts"
    assert all(s[2] == first.id for s in between), [s for s in between if s[2] != first.id][:5]
    assert client.get_result(first.id, timeout=5) == 4
    wait_for(lambda: holder(session_db, key) is None, timeout=10, what="the key to be released")


def test_retrying_task_deduplicates_a_submit_between_attempts(
    client: CeleryClient, stack: Stack, session_db: RedisDb, unique: str
) -> None:
    key = f"retry-submit:{unique}"
    counter = f"attempts:{unique}"
    first = client.submit("tests.flaky", [counter, 2], dedupe_key=key)
    wait_for(lambda: int(session_db.client.get(counter) or 0) >= 1, timeout=30, what="a first attempt")
    again = client.submit("tests.flaky", [counter, 2], dedupe_key=key)
    assert again.deduplicated is True and again.id == first.id
    assert client.get_result(first.id, timeout=30) == 3


def test_revoke_of_a_queued_task_releases_its_key(
    client: CeleryClient, session_db: RedisDb, unique: str
) -> None:
    key = f"revoke:{unique}"
    first = client.submit("tests.sleep", [0.1], queue=PARKED, dedupe_key=key)
    try:
        assert holder(session_db, key) == first.id
        client.revoke(first.id)
        assert holder(session_db, key) is None
        assert not session_db.client.exists(f"tasksys:dedupe-task:{first.id}")
        second = client.submit("tests.sleep", [0.1], queue=PARKED, dedupe_key=key)
        assert second.deduplicated is False and second.id != first.id
        client.revoke(second.id)
    finally:
        drop_parked(session_db, PARKED)


def test_release_never_frees_a_newer_owner(client: CeleryClient, session_db: RedisDb, unique: str) -> None:
    key = f"newer:{unique}"
    first = client.submit("tests.sleep", [0.1], queue=PARKED, dedupe_key=key)
    client.revoke(first.id)
    second = client.submit("tests.sleep", [0.1], queue=PARKED, dedupe_key=key)
    try:
        client.revoke(first.id)  # again, as a worker meeting the revoked message does
        assert holder(session_db, key) == second.id
    finally:
        client.revoke(second.id)
        drop_parked(session_db, PARKED)


def test_ttl_expiry_releases_the_key(client: CeleryClient, session_db: RedisDb, unique: str) -> None:
    key = f"ttl:{unique}"
    first = client.submit("tests.sleep", [0.1], queue=PARKED, dedupe_key=key, dedupe_ttl=1)
    try:
        assert 0 < session_db.client.pttl(f"tasksys:dedupe:{key}") <= 1000
        assert client.submit("tests.sleep", [0.1], queue=PARKED, dedupe_key=key).deduplicated is True
        wait_for(lambda: holder(session_db, key) is None, timeout=5, what="the key to expire")
        second = client.submit("tests.sleep", [0.1], queue=PARKED, dedupe_key=key, dedupe_ttl=1)
        assert second.deduplicated is False and second.id != first.id
        assert len(parked_messages(session_db, PARKED, key)) == 2
    finally:
        drop_parked(session_db, PARKED)


def test_submit_async_deduplicates_and_caller_ids_still_apply(
    client: CeleryClient, session_db: RedisDb, unique: str
) -> None:
    key = f"async:{unique}"

    async def run() -> list[Any]:
        first = await client.submit_async(
            "tests.sleep", [0.1], queue=PARKED, dedupe_key=key, task_id=f"a-{unique}"
        )
        rest = await asyncio.gather(
            *(client.submit_async("tests.sleep", [0.1], queue=PARKED, dedupe_key=key) for _ in range(20))
        )
        return [first, *rest]

    try:
        answers = asyncio.run(run())
        assert answers[0] == f"a-{unique}" and answers[0].deduplicated is False
        assert all(a == f"a-{unique}" and a.deduplicated for a in answers[1:])
        assert len(parked_messages(session_db, PARKED, key)) == 1
        # A caller id given with a key that is held: the existing task, and the id stays free.
        other = client.submit("tests.sleep", [0.1], queue=PARKED, dedupe_key=key, task_id=f"b-{unique}")
        assert other.id == f"a-{unique}" and other.deduplicated is True
        client.revoke(f"a-{unique}")
        reused = client.submit("tests.sleep", [0.1], queue=PARKED, dedupe_key=key, task_id=f"b-{unique}")
        assert reused.id == f"b-{unique}" and reused.deduplicated is False
        client.revoke(reused.id)
    finally:
        drop_parked(session_db, PARKED)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dedupe_key", "x" * 201),
        ("dedupe_key", "a\x00b"),
        ("dedupe_key", "line\nbreak"),
        ("dedupe_key", ":leading"),
        ("dedupe_key", ""),
        ("dedupe_key", 42),
        ("dedupe_ttl", 0),
        ("dedupe_ttl", 30 * 86400 + 1),
        ("dedupe_ttl", 1e400),
        ("dedupe_ttl", "60"),
    ],
)
def test_hostile_input_is_refused_with_422(
    api: Api, session_db: RedisDb, unique: str, field: str, value: Any
) -> None:
    body = {"task": "tests.sleep", "args": [0.1], "queue": PARKED, "dedupe_key": f"ok:{unique}", field: value}
    if isinstance(value, float) and value > 1e300:
        answer = api.http.post(
            "/api/v1/tasks",
            content=json.dumps(body).replace("Infinity", "1e400"),
            headers={"content-type": "application/json"},
        )
    else:
        answer = api.http.post("/api/v1/tasks", json=body)
    assert answer.status_code == 422, answer.text
    assert any(d["field"] == field for d in answer.json()["error"]["details"]), answer.text
    assert parked_messages(session_db, PARKED) == []
    assert session_db.client.keys("tasksys:dedupe*") == [] or holder(session_db, f"ok:{unique}") is None


def test_glob_keys_stay_inside_the_prefix(api: Api, session_db: RedisDb, unique: str) -> None:
    key = f"report:{unique}:*"
    answer = api.http.post(
        "/api/v1/tasks", json={"task": "tests.sleep", "args": [0.1], "queue": PARKED, "dedupe_key": key}
    )
    try:
        assert answer.status_code == 202, answer.text
        assert holder(session_db, key) == answer.json()["task_id"]
        assert session_db.client.keys(f"*{unique}*") == [f"tasksys:dedupe:{key}".encode()]
    finally:
        api.http.delete(f"/api/v1/tasks/{answer.json()['task_id']}")
        drop_parked(session_db, PARKED)


def test_http_refuses_dedupe_with_wait_and_ttl_without_key(
    api: Api, session_db: RedisDb, unique: str
) -> None:
    base = {"task": "tests.sleep", "args": [0.1], "queue": PARKED}
    with_wait = api.http.post("/api/v1/tasks?wait=1", json={**base, "dedupe_key": f"w:{unique}"})
    assert with_wait.status_code == 422 and with_wait.json()["error"]["details"][0]["field"] == "dedupe_key"
    ttl_only = api.http.post("/api/v1/tasks", json={**base, "dedupe_ttl": 60})
    assert ttl_only.status_code == 422 and ttl_only.json()["error"]["details"][0]["field"] == "dedupe_ttl"
    assert parked_messages(session_db, PARKED) == []


def test_python_refusals_write_nothing(client: CeleryClient, session_db: RedisDb, unique: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        client.submit("tests.sleep", [0.1], queue=PARKED, dedupe_key=":bad")
    assert info.value.field == "dedupe_key"
    with pytest.raises(InvalidRequestError) as info:
        client.submit("tests.sleep", [0.1], queue=PARKED, dedupe_key=f"k:{unique}", shadow="other")
    assert info.value.field == "dedupe_key" and "shadow" in str(info.value)
    with pytest.raises(InvalidRequestError) as info:
        client.submit_many([TaskRequest("tests.sleep", [0.1], options={"dedupe_key": f"k:{unique}"})])
    assert info.value.field == "dedupe_key"
    assert parked_messages(session_db, PARKED) == []
    assert holder(session_db, f"k:{unique}") is None


def test_unreachable_redis_raises_broker_unavailable() -> None:
    port = free_port()
    down = CeleryClient("down", f"redis://127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/0")
    try:
        with pytest.raises(BrokerUnavailableError):
            down.submit("math.number_sum", (1, 2), dedupe_key="k")
        with pytest.raises(BrokerUnavailableError):
            asyncio.run(down.submit_async("math.number_sum", (1, 2), dedupe_key="k"))
        with pytest.raises(BrokerUnavailableError):
            down.deduplicated_counts()
    finally:
        down.close()


def test_http_dedupe_submit_with_redis_down_is_503_and_metrics_still_answer(
    stack: Stack, session_tmp: Path
) -> None:
    from tests.integration.test_api_outage import start_api

    with private_redis() as server:
        proc, base = start_api(server.url, stack, session_tmp / "dedupe-outage")
        http = httpx.Client(base_url=base, timeout=10)
        body = {"task": "math.number_sum", "args": [1, 2], "dedupe_key": "outage:1"}
        try:
            first, again = http.post("/api/v1/tasks", json=body), http.post("/api/v1/tasks", json=body)
            assert (first.status_code, again.status_code) == (202, 200), (first.text, again.text)
            assert 'tasksys_tasks_deduplicated_total{task="math.number_sum"} 1.0' in http.get("/metrics").text
            server.kill()
            started = time.monotonic()
            down = http.post("/api/v1/tasks", json={**body, "dedupe_key": "outage:2"})
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] == "broker_unavailable"
            assert time.monotonic() - started < 3
            metrics = http.get("/metrics")
            assert metrics.status_code == 200 and "tasksys_broker_up 0.0" in metrics.text
        finally:
            http.close()
            proc.stop()


@pytest.mark.parametrize("priority", [None, 0, 5, 9])
def test_message_lands_where_a_plain_submit_lands(
    client: CeleryClient, session_db: RedisDb, unique: str, priority: int | None
) -> None:
    def where(task_id: str) -> list[tuple[str, dict[str, Any]]]:
        found = []
        for name in redis_priority_queue_keys(PARKED):
            for raw in session_db.client.lrange(name, 0, -1):
                message = json.loads(raw)
                if message["headers"]["id"] == task_id:
                    found.append((name, message))
        return found

    try:
        plain = client.submit("tests.sleep", [0.1], queue=PARKED, priority=priority)
        deduped = client.submit(
            "tests.sleep", [0.1], queue=PARKED, priority=priority, dedupe_key=f"p:{unique}"
        )
        [(plain_key, plain_message)] = where(plain.id)
        [(dedupe_key, dedupe_message)] = where(deduped.id)
        assert dedupe_key == plain_key
        assert dedupe_message["headers"].pop("tasksys_dedupe") == f"p:{unique}"
        for message in (plain_message, dedupe_message):
            message["properties"].pop("delivery_tag")
            for name in ("id", "root_id"):
                message["headers"].pop(name)
            message["properties"].pop("correlation_id")
        assert dedupe_message == plain_message
    finally:
        client.revoke(deduped.id)
        drop_parked(session_db, PARKED)


def test_worker_releases_the_key_of_a_task_revoked_by_another_tool(
    client: CeleryClient, stack: Stack, session_db: RedisDb, unique: str
) -> None:
    key = f"tool-revoke:{unique}"
    first = client.submit("tests.sleep", [0.1], countdown=1, dedupe_key=key)
    client.app.control.revoke(first.id)  # as `celery control revoke` or Flower would: no release here
    assert holder(session_db, key) == first.id
    wait_for(lambda: holder(session_db, key) is None, timeout=15, what="the worker to release the key")
    assert client.get_status(first.id) == "REVOKED"


def test_dedupe_submit_from_inside_a_task(
    client: CeleryClient, stack: Stack, session_db: RedisDb, unique: str
) -> None:
    key = f"child:{unique}"
    parent = client.submit("tests.dedupe_children", [key, PARKED])
    try:
        (first_id, first_dup), (second_id, second_dup) = client.get_result(parent.id, timeout=30)
        assert (first_dup, second_dup) == (False, True) and second_id == first_id
        [message] = parked_messages(session_db, PARKED, key)
        assert message["headers"]["id"] == first_id
        assert message["headers"]["parent_id"] == parent.id and message["headers"]["root_id"] == parent.id
    finally:
        drop_parked(session_db, PARKED)
        owner = holder(session_db, key)
        if owner is not None:
            client.revoke(owner)
