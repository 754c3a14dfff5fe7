"""Hostile requests found by trying the API as an attacker would (issue 8): names that
address internal keys, reused ids, concurrent resubmits, unbounded lists and queues.
Each ends by checking that the worker still runs a task and beat still fires."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import Api, Stack
from tests.integration.test_api import QUARANTINE, assert_error, wait_done
from tests.support.procs import wait_for

pytestmark = pytest.mark.integration


def system_still_works(api: Api, stack: Stack, unique: str) -> None:
    """The worker answers and runs a task; beat fires a new 1 s entry."""
    task_id = api.http.post("/api/v1/tasks", json={"task": "math.number_sum", "args": [2, 2]}).json()[
        "task_id"
    ]
    assert wait_done(api, task_id)["result"] == 4
    name, key = f"alive-{unique}", f"alive-{unique}"
    entry = {
        "name": name,
        "task": "tests.record",
        "schedule": {"type": "interval", "value": 1},
        "args": [key],
    }
    assert api.http.post("/api/v1/periodic-tasks", json=entry).status_code == 201
    try:
        wait_for(lambda: stack.db.client.llen(key) >= 1, timeout=30, what="beat to fire a new entry")
    finally:
        api.http.delete(f"/api/v1/periodic-tasks/{name}")


@pytest.mark.parametrize("name", [":lock", ":schedule", ":statics", "%20padded", "padded%20"])
def test_periodic_names_never_reach_the_schedulers_keys(
    api: Api, stack: Stack, unique: str, name: str
) -> None:
    db = stack.db.client
    schedule_before = db.zrange("redbeat::schedule", 0, -1)
    lock_before = db.get("redbeat::lock")
    body = {"task": "math.number_sum", "schedule": {"type": "interval", "value": 1}, "args": [1, 1]}
    assert_error(api.http.put(f"/api/v1/periodic-tasks/{name}", json=body), 422, "validation_error")
    assert_error(api.http.get(f"/api/v1/periodic-tasks/{name}"), 422, "validation_error")
    assert_error(api.http.delete(f"/api/v1/periodic-tasks/{name}"), 422, "validation_error")
    assert_error(
        api.http.patch(f"/api/v1/periodic-tasks/{name}", json={"enabled": False}), 422, "validation_error"
    )
    create = {**body, "name": name.replace("%20", " ")}
    assert_error(api.http.post("/api/v1/periodic-tasks", json=create), 422, "validation_error")
    assert db.zrange("redbeat::schedule", 0, -1) == schedule_before
    assert db.exists("redbeat::schedule") and db.type("redbeat::lock") == b"string"
    assert db.get("redbeat::lock") == lock_before
    system_still_works(api, stack, unique)


def test_put_accepts_an_entry_as_get_returns_it(api: Api, unique: str) -> None:
    name = f"roundtrip-{unique}"
    body = {"task": "math.number_sum", "schedule": {"type": "cron", "value": "0 3 * * *"}, "args": [1, 2]}
    try:
        assert api.http.put(f"/api/v1/periodic-tasks/{name}", json=body).status_code == 200
        shown = api.http.get(f"/api/v1/periodic-tasks/{name}").json()
        again = api.http.put(f"/api/v1/periodic-tasks/{name}", json=shown)
        assert again.status_code == 200, again.text
        assert again.json()["schedule"] == shown["schedule"] and again.json()["args"] == [1, 2]
        other = api.http.put(f"/api/v1/periodic-tasks/{name}", json={**shown, "name": "someone-else"})
        error = assert_error(other, 422, "validation_error")
        assert "differs from" in error["message"]
    finally:
        api.http.delete(f"/api/v1/periodic-tasks/{name}")


def test_lists_are_paginated_and_bounded(api: Api, unique: str) -> None:
    names = [f"pg-{unique}-{i}" for i in range(5)]
    for name in names:
        body = {"task": "math.number_sum", "schedule": {"type": "interval", "value": 60}, "args": [1, 1]}
        assert api.http.put(f"/api/v1/periodic-tasks/{name}", json=body).status_code == 200
    try:
        everything = api.http.get("/api/v1/periodic-tasks", params={"limit": 1000}).json()
        listed = [e["name"] for e in everything["periodic_tasks"]]
        assert everything["total"] == len(listed) and listed == sorted(listed)
        assert api.http.get("/api/v1/periodic-tasks").json()["limit"] == 100
        page = api.http.get(
            "/api/v1/periodic-tasks", params={"limit": 2, "offset": listed.index(names[0])}
        ).json()
        assert [e["name"] for e in page["periodic_tasks"]] == names[:2] and page["total"] == len(listed)
        for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"offset": 9223372036854775807}):
            assert_error(api.http.get("/api/v1/periodic-tasks", params=params), 422, "validation_error")
            assert_error(api.http.get("/api/v1/dead-letters", params=params), 422, "validation_error")
    finally:
        for name in names:
            api.http.delete(f"/api/v1/periodic-tasks/{name}")


def test_a_reused_task_id_is_409_and_sends_nothing(api: Api, stack: Stack, unique: str) -> None:
    done = f"dup-{unique}"
    assert (
        api.http.post(
            "/api/v1/tasks", json={"task": "math.number_sum", "args": [1, 2], "task_id": done}
        ).status_code
        == 202
    )
    assert wait_done(api, done)["result"] == 3
    again = api.http.post("/api/v1/tasks", json={"task": "math.number_sum", "args": [7, 7], "task_id": done})
    error = assert_error(again, 409, "task_id_in_use")
    assert error["details"]["task_id"] == done
    waited = api.http.post(
        "/api/v1/tasks?wait=2", json={"task": "math.number_sum", "args": [7, 7], "task_id": done}
    )
    assert_error(waited, 409, "task_id_in_use")
    assert wait_done(api, done)["result"] == 3  # the stored result is not replaced

    key = f"pending-{unique}"
    pending = f"later-{unique}"
    body = {"task": "tests.record", "args": [key, "once"], "task_id": pending, "countdown": 2}
    assert api.http.post("/api/v1/tasks", json=body).status_code == 202
    assert_error(api.http.post("/api/v1/tasks", json=body), 409, "task_id_in_use")
    wait_done(api, pending)
    assert stack.db.client.llen(key) == 1

    revoked = f"revoked-{unique}"
    api.http.delete(f"/api/v1/tasks/{revoked}")
    body = {"task": "math.number_sum", "args": [1, 2], "task_id": revoked}
    assert_error(api.http.post("/api/v1/tasks", json=body), 409, "task_id_in_use")


def test_concurrent_submits_of_one_id_accept_one(api: Api, stack: Stack, unique: str) -> None:
    key, task_id = f"race-{unique}", f"race-{unique}"
    body = {"task": "tests.record", "args": [key, "x"], "task_id": task_id}
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: api.http.post("/api/v1/tasks", json=body).status_code, range(16)))
    assert sorted(codes) == [202] + [409] * 15
    wait_done(api, task_id)
    assert stack.db.client.llen(key) == 1


def test_concurrent_dead_letter_resubmits_send_once(api: Api, client: Any, stack: Stack, unique: str) -> None:
    from pkg.celery_task._deadletter import dead_letters_for

    key, task_id = f"dlq-race-{unique}", f"dlq-race-{unique}"
    entry = {
        "task_id": task_id,
        "task": "tests.record",
        "args": [key, "again"],
        "kwargs": {},
        "queue": "default",
        "reason": "failed",
        "error": {"type": "RuntimeError", "message": "boom"},
        "resubmittable": True,
    }
    entry_id = dead_letters_for(client.app).record(entry)
    client.app.backend.store_result(task_id, None, "FAILURE")
    with ThreadPoolExecutor(6) as pool:
        codes = list(
            pool.map(
                lambda _: api.http.post(f"/api/v1/dead-letters/{entry_id}/resubmit").status_code, range(6)
            )
        )
    assert sorted(codes) == [202] + [404] * 5
    wait_for(lambda: api.http.get(f"/api/v1/tasks/{task_id}").json()["status"] == "SUCCESS", timeout=30)
    assert stack.db.client.llen(key) == 1
    assert_error(api.http.post(f"/api/v1/dead-letters/{entry_id}/resubmit"), 404, "dead_letter_not_found")


def test_unknown_queues_are_refused_and_leave_nothing(api: Api, stack: Stack, unique: str) -> None:
    db = stack.db.client
    keys_before = len(db.keys("*"))
    metrics_before = len(api.http.get("/metrics").text)
    for i in range(200):
        queue = f"random-{uuid.uuid4().hex}"
        response = api.http.post(
            "/api/v1/tasks", json={"task": "math.number_sum", "args": [i, i], "queue": queue}
        )
        error = assert_error(response, 422, "validation_error")
        assert "default" in error["message"] and QUARANTINE in error["message"]
    entry = {
        "name": f"q-{unique}",
        "task": "math.number_sum",
        "schedule": {"type": "interval", "value": 5},
        "args": [1, 1],
        "queue": "random-queue",
    }
    assert_error(api.http.post("/api/v1/periodic-tasks", json=entry), 422, "validation_error")
    assert len(db.keys("*")) <= keys_before + 5  # results and events of other tests only
    assert len(api.http.get("/metrics").text) < metrics_before + 4096


def test_nan_in_the_body_is_422(api: Api) -> None:
    for raw in (
        '{"task": "math.number_sum", "args": [NaN, 1]}',
        '{"task": "math.number_sum", "args": [1, Infinity]}',
    ):
        response = api.http.post("/api/v1/tasks", content=raw, headers={"Content-Type": "application/json"})
        assert_error(response, 422, "validation_error")
    response = api.http.post(
        "/api/v1/tasks",
        content=json.dumps({"task": "math.number_sum", "args": [1, 1], "countdown": float("nan")}),
        headers={"Content-Type": "application/json"},
    )
    error = assert_error(response, 422, "validation_error")
    assert "finite" in json.dumps(error)


def test_deep_nesting_never_reaches_a_worker(api: Api, stack: Stack, unique: str) -> None:
    """The 500-level payload that crashed every worker in a loop: 422, nothing sent."""
    deep = "[" * 500 + "1" + "]" * 500
    raw = '{"task": "math.number_sum", "args": [' + deep + ', 1], "queue": "' + QUARANTINE + '"}'
    response = api.http.post("/api/v1/tasks", content=raw, headers={"Content-Type": "application/json"})
    error = assert_error(response, 422, "validation_error")
    assert "nested more than 32 levels" in error["message"]
    assert httpx.get(api.url("/healthz")).status_code == 200
    system_still_works(api, stack, unique)


def test_beat_drops_foreign_keys_from_its_index_and_keeps_firing(api: Api, stack: Stack, unique: str) -> None:
    """A store corrupted by the old bug (``redbeat::lock``-like keys in the schedule
    index, a definition that is not JSON) no longer crashes beat."""
    db = stack.db.client
    wrong_type, garbled = f"redbeat:wrongtype-{unique}", f"redbeat:garbled-{unique}"
    db.set(wrong_type, "not an entry")
    db.hset(garbled, "definition", "{not json")
    db.zadd("redbeat::schedule", {wrong_type: 0, garbled: 0})
    try:
        wait_for(
            lambda: (
                db.zscore("redbeat::schedule", wrong_type) is None
                and db.zscore("redbeat::schedule", garbled) is None
            ),
            timeout=30,
            what="beat to drop the foreign keys from its index",
        )
        assert db.get(wrong_type) == b"not an entry"  # dropped from the index, not deleted
        listed = api.http.get("/api/v1/periodic-tasks", params={"limit": 1000})
        assert listed.status_code == 200
        system_still_works(api, stack, unique)
    finally:
        db.delete(wrong_type, garbled)
        db.zrem("redbeat::schedule", wrong_type, garbled)
