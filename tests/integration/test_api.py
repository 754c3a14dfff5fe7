"""The HTTP API against a real uvicorn process, worker and beat on real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from tests.conftest import API_TOKEN, Api, Stack
from tests.support.procs import wait_for

pytestmark = pytest.mark.integration

TASK_FIELDS = {
    "task_id",
    "task",
    "status",
    "result",
    "error",
    "progress",
    "retries",
    "queue",
    "worker",
    "date_done",
    "runtime_ms",
}
ENTRY_FIELDS = {
    "name",
    "task",
    "schedule",
    "args",
    "kwargs",
    "queue",
    "enabled",
    "last_run_at",
    "next_run_at",
    "total_run_count",
    "static",
}


def wait_done(api: Api, task_id: str, timeout: float = 30) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = api.http.get(f"/api/v1/tasks/{task_id}").json()
        return body if body["status"] in ("SUCCESS", "FAILURE", "REVOKED") else None

    return wait_for(done, timeout=timeout, interval=0.1, what=f"task {task_id} to finish")


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    return body["error"]


#: A queue the API accepts (``CELERY_EXTRA_QUEUES`` of the ``api`` fixture) that no
#: worker consumes: a rejected request that wrongly sent something would show up there.
QUARANTINE = "quarantine"


class Untouched:
    """Records what a rejected request could have written and checks it stayed the same:
    the queue its body named (no worker consumes it) and the periodic schedule."""

    def __init__(self, stack: Stack, queue: str) -> None:
        self.stack, self.queue = stack, queue
        self.schedule = self._schedule()

    def _schedule(self) -> dict[bytes, Any]:
        client = self.stack.db.client
        return {key: client.hget(key, "definition") for key in client.zrange("redbeat::schedule", 0, -1)}

    def check(self) -> None:
        time.sleep(0.5)
        assert sum(self.stack.db.client.llen(k) for k in self.stack.db.client.keys(f"{self.queue}*")) == 0
        assert self._schedule() == self.schedule


# -- happy paths -------------------------------------------------------------------


def test_submit_and_read_a_task(api: Api, stack: Stack) -> None:
    response = api.http.post("/api/v1/tasks", json={"task": "math.number_sum", "args": [1, 2]})
    assert response.status_code == 202
    accepted = response.json()
    assert set(accepted) == {"task_id", "status", "deduplicated"} and accepted["status"] == "PENDING"
    assert accepted["deduplicated"] is False
    info = wait_done(api, accepted["task_id"])
    assert set(info) == TASK_FIELDS
    assert info["status"] == "SUCCESS" and info["result"] == 3 and info["error"] is None
    assert info["task"] == "math.number_sum" and info["queue"] == "default"
    assert info["worker"].startswith("stack-worker@") and info["retries"] == 0
    stored = json.loads(stack.db.client.get(f"celery-task-meta-{accepted['task_id']}"))
    assert info["date_done"] and info["runtime_ms"] == stored["runtime_ms"]
    assert 0 < info["runtime_ms"] < 10_000  # measured by the worker, in ms


def test_submit_with_all_options(api: Api, unique: str) -> None:
    body = {
        "task": "math.number_sum",
        "kwargs": {"x": 2, "y": 5},
        "queue": "default",
        "priority": 7,
        "countdown": 1,
        "expires": 60,
        "task_id": f"api-{unique}",
    }
    response = api.http.post("/api/v1/tasks", json=body)
    assert response.status_code == 202 and response.json()["task_id"] == f"api-{unique}"
    assert wait_done(api, f"api-{unique}")["result"] == 7


def test_failed_task_reports_its_error(api: Api) -> None:
    task_id = api.http.post("/api/v1/tasks", json={"task": "math.number_sum", "args": ["a", 1]}).json()[
        "task_id"
    ]
    info = wait_done(api, task_id)
    assert info["status"] == "FAILURE" and info["result"] is None
    assert info["error"] == {
        "type": "PermanentError",
        "message": "x must be a number (int or float), got str 'a'",
    }


def test_progress_is_visible(api: Api) -> None:
    task_id = api.http.post("/api/v1/tasks", json={"task": "tests.progress", "args": [5, 0.3]}).json()[
        "task_id"
    ]
    info = wait_for(
        lambda: (b := api.http.get(f"/api/v1/tasks/{task_id}").json())["status"] == "PROGRESS" and b,
        timeout=20,
        interval=0.05,
        what="PROGRESS",
    )
    assert info["progress"]["total"] == 5 and info["progress"]["message"].startswith("step")
    assert wait_done(api, task_id)["result"] == 5


def test_unknown_id_reads_pending(api: Api, unique: str) -> None:
    info = api.http.get(f"/api/v1/tasks/never-seen-{unique}").json()
    assert info["status"] == "PENDING" and info["task"] is None and info["result"] is None


def test_bulk_statuses(api: Api, unique: str) -> None:
    ids = [
        api.http.post("/api/v1/tasks", json={"task": "math.number_sum", "args": [i, i]}).json()["task_id"]
        for i in range(3)
    ]
    for task_id in ids:
        wait_done(api, task_id)
    response = api.http.post("/api/v1/tasks/status", json={"task_ids": [*ids, f"nope-{unique}"]})
    assert response.status_code == 200
    assert response.json() == {"statuses": {**dict.fromkeys(ids, "SUCCESS"), f"nope-{unique}": "PENDING"}}


def test_revoke_queued_and_terminate_running(api: Api, stack: Stack, unique: str) -> None:
    queued = api.http.post(
        "/api/v1/tasks", json={"task": "tests.record", "args": [f"rv-{unique}", "x"], "countdown": 3}
    ).json()["task_id"]
    response = api.http.delete(f"/api/v1/tasks/{queued}")
    assert response.status_code == 202 and response.json() == {"task_id": queued, "status": "REVOKED"}
    running = api.http.post(
        "/api/v1/tasks", json={"task": "tests.sleep", "args": [30, f"rs-{unique}"]}
    ).json()
    wait_for(lambda: stack.db.client.llen(f"rs-{unique}"), timeout=20, what="long task to start")
    assert (
        api.http.delete(f"/api/v1/tasks/{running['task_id']}", params={"terminate": "true"}).status_code
        == 202
    )
    assert wait_done(api, running["task_id"])["status"] == "REVOKED"
    time.sleep(3.5)
    assert api.http.get(f"/api/v1/tasks/{queued}").json()["status"] == "REVOKED"
    assert stack.db.client.llen(f"rv-{unique}") == 0


@pytest.mark.parametrize(
    "kind, steps, callback, expected",
    [
        ("chain", [["math.number_sum", [1, 2]], ["math.number_sum", [10]]], None, 13),
        ("group", [["math.number_sum", [1, 1]], ["math.number_sum", [2, 2]]], None, [2, 4]),
        ("chord", [["math.number_sum", [1, 1]], ["math.number_sum", [2, 2]]], ["tests.total", []], 6),
    ],
)
def test_workflows(api: Api, kind: str, steps: list, callback: list | None, expected: Any) -> None:
    body: dict[str, Any] = {"type": kind, "steps": [{"task": t, "args": a} for t, a in steps]}
    if callback:
        body["callback"] = {"task": callback[0], "args": callback[1]}
    response = api.http.post("/api/v1/workflows", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert set(accepted) == {"workflow_id", "task_ids"}
    assert len(accepted["task_ids"]) == len(steps) + (1 if callback else 0)
    info = wait_done(api, accepted["workflow_id"])
    assert info["status"] == "SUCCESS" and info["result"] == expected


def test_periodic_task_lifecycle(api: Api, stack: Stack, unique: str) -> None:
    name, key = f"api-tick-{unique}", f"api-tick-{unique}"
    body = {
        "name": name,
        "task": "tests.record",
        "schedule": {"type": "interval", "value": 1},
        "args": [key, "tick"],
        "kwargs": {},
        "queue": "default",
        "enabled": True,
    }
    response = api.http.post("/api/v1/periodic-tasks", json=body)
    assert response.status_code == 201, response.text
    entry = response.json()
    assert set(entry) == ENTRY_FIELDS
    assert entry["schedule"] == {"type": "interval", "value": 1.0, "description": "every second"}
    assert entry["static"] is False and entry["queue"] == "default"
    wait_for(lambda: stack.db.client.llen(key) >= 2, timeout=15, what="the new entry to fire")

    assert_error(api.http.post("/api/v1/periodic-tasks", json=body), 409, "conflict")
    patched = api.http.patch(f"/api/v1/periodic-tasks/{name}", json={"enabled": False}).json()
    assert patched["enabled"] is False and patched["next_run_at"] is None
    replaced = api.http.put(
        f"/api/v1/periodic-tasks/{name}",
        json={
            "task": "tests.record",
            "schedule": {"type": "cron", "value": "30 8 * * *"},
            "args": [key, "cron"],
        },
    ).json()
    assert replaced["schedule"]["description"] == "at 08:30 every day (Asia/Shanghai)"
    assert replaced["enabled"] is True and replaced["total_run_count"] >= 2
    got = api.http.get(f"/api/v1/periodic-tasks/{name}").json()
    assert got == replaced
    listed = api.http.get("/api/v1/periodic-tasks", params={"limit": 1000}).json()["periodic_tasks"]
    assert name in {e["name"] for e in listed} and {"task_heartbeat_30s"} <= {e["name"] for e in listed}
    assert api.http.delete(f"/api/v1/periodic-tasks/{name}").status_code == 204
    assert_error(api.http.get(f"/api/v1/periodic-tasks/{name}"), 404, "periodic_task_not_found")


def test_static_entries_can_be_disabled_but_not_deleted(api: Api) -> None:
    name = "task_heartbeat_30s"
    try:
        assert (
            api.http.patch(f"/api/v1/periodic-tasks/{name}", json={"enabled": False}).json()["enabled"]
            is False
        )
        assert_error(api.http.delete(f"/api/v1/periodic-tasks/{name}"), 409, "conflict")
        assert_error(api.http.patch(f"/api/v1/periodic-tasks/{name}", json={"args": [5, 5]}), 409, "conflict")
        assert_error(
            api.http.put(
                f"/api/v1/periodic-tasks/{name}",
                json={
                    "task": "math.number_sum",
                    "schedule": {"type": "interval", "value": 5},
                    "args": [1, 1],
                },
            ),
            409,
            "conflict",
        )
        assert api.http.get(f"/api/v1/periodic-tasks/{name}").json()["static"] is True
    finally:
        api.http.patch(f"/api/v1/periodic-tasks/{name}", json={"enabled": True})


def test_queues_and_workers(api: Api) -> None:
    queues = api.http.get("/api/v1/queues").json()
    assert set(queues["queues"]) >= {"default", "cron_queue", "video_queue"}
    workers = api.http.get("/api/v1/workers").json()["workers"]
    (stack_worker,) = [w for w in workers if w["name"].startswith("stack-worker@")]
    assert set(stack_worker) == {"name", "status", "active", "processed", "pool", "queues"}
    assert stack_worker["status"] == "online" and stack_worker["queues"] == ["default"]
    assert stack_worker["pool"]["max_concurrency"] == 2
    assert stack_worker["processed"].get("math.number_sum", 0) >= 1


def test_health_readiness_and_metrics(api: Api) -> None:
    assert httpx.get(api.url("/healthz")).json() == {"status": "ok"}  # no token needed
    ready = api.http.get("/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert set(checks) == {"broker", "result_backend", "database", "redis"}
    assert all(c["ok"] and c["latency_ms"] is not None and c["error"] is None for c in checks.values())
    api.http.post("/api/v1/tasks", json={"task": "math.number_sum", "args": [1, 1]})
    text = api.http.get("/metrics").text
    assert 'tasksys_tasks_submitted_total{queue="default",task="math.number_sum"}' in text
    assert (
        'tasksys_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/api/v1/tasks",status="202"}'
        in text
    )
    assert 'tasksys_queue_length{queue="cron_queue"}' in text and "tasksys_broker_up 1.0" in text


# -- security and bad input ----------------------------------------------------------


def test_token_is_required_except_for_healthz(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_TOKEN}):
        for method, path in (
            ("GET", "/api/v1/queues"),
            ("POST", "/api/v1/tasks"),
            ("GET", "/metrics"),
            ("GET", "/readyz"),
            ("GET", "/docs"),
        ):
            response = httpx.request(method, api.url(path), headers=headers, json={})
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(api.url("/healthz")).status_code == 200


@pytest.mark.parametrize(
    "task", ["tests.internal_only", "celery.backend_cleanup", "celery.chord_unlock", "no.such"]
)
def test_non_public_tasks_are_unknown(api: Api, stack: Stack, unique: str, task: str) -> None:
    untouched = Untouched(stack, QUARANTINE)
    response = api.http.post("/api/v1/tasks", json={"task": task, "queue": QUARANTINE})
    error = assert_error(response, 404, "unknown_task")
    assert task in error["message"]
    workflow = {"type": "chain", "steps": [{"task": "math.number_sum", "args": [1, 1]}, {"task": task}]}
    assert_error(api.http.post("/api/v1/workflows", json=workflow), 404, "unknown_task")
    entry = {"name": f"x-{unique}", "task": task, "schedule": {"type": "interval", "value": 5}}
    assert_error(api.http.post("/api/v1/periodic-tasks", json=entry), 404, "unknown_task")
    untouched.check()


def nested(depth: int) -> list[Any]:
    value: list[Any] = [1]
    for _ in range(depth - 1):
        value = [value]
    return value


BAD_TASK_BODIES = [
    ({"task": "math.number_sum", "priority": 10}, "priority"),
    ({"task": "math.number_sum", "priority": -1}, "priority"),
    ({"task": "math.number_sum", "priority": "9"}, "priority"),
    ({"task": "math.number_sum", "args": "1,2"}, "args"),
    ({"task": "math.number_sum", "kwargs": [1]}, "kwargs"),
    ({"task": 5}, "task"),
    ({"args": [1, 2]}, "task"),
    ({"task": "math.number_sum", "countdown": -1}, "countdown"),
    ({"task": "math.number_sum", "eta": "tomorrow"}, "eta"),
    ({"task": "math.number_sum", "task_id": ""}, "task_id"),
    ({"task": "math.number_sum", "surprise": 1}, "surprise"),
    ({"task": "math.number_sum", "countdown": 5, "eta": "2030-01-01T00:00:00+00:00"}, "countdown"),
    ({"task": "math.number_sum", "expires": 0}, "expires"),
    ({"task": "math.number_sum", "args": [float("nan"), 1]}, "args"),
    ({"task": "math.number_sum", "args": [1, float("inf")]}, "args"),
    ({"task": "math.number_sum", "countdown": float("nan")}, "countdown"),
    ({"task": "math.number_sum", "expires": 1e12}, "expires"),
    ({"task": "math.number_sum", "expires": 1e300}, "expires"),
    ({"task": "math.number_sum", "countdown": 2592000, "expires": "9999-12-31T00:00:00"}, "expires"),
    ({"task": "math.number_sum", "eta": "0001-01-01T00:00:00"}, "eta"),
    ({"task": "math.number_sum", "args": [1, 2, 3]}, "args"),
    ({"task": "math.number_sum", "args": [nested(500), 1]}, "args"),
    ({"task": "math.number_sum", "kwargs": {"x": nested(40), "y": 1}, "args": []}, "kwargs"),
    ({"task": "math.number_sum", "queue": "celery-task-meta-0123"}, "queue"),
    ({"task": "math.number_sum", "queue": "unacked"}, "queue"),
    ({"task": "math.number_sum", "queue": "tasksys:revoked"}, "queue"),
    ({"task": "math.number_sum", "queue": "redbeat::lock"}, "queue"),
    ({"task": "math.number_sum", "queue": "not-configured"}, "queue"),
]


@pytest.mark.parametrize("body, field", BAD_TASK_BODIES)
def test_bad_task_bodies_are_422_naming_the_field(
    api: Api, stack: Stack, unique: str, body: dict, field: str
) -> None:
    queue = QUARANTINE
    untouched = Untouched(stack, queue)
    payload = json.dumps({"args": [1, 2], "queue": queue, **body})  # NaN/Infinity literals too
    response = api.http.post("/api/v1/tasks", content=payload, headers={"Content-Type": "application/json"})
    error = assert_error(response, 422, "validation_error")
    assert field in {d["field"] for d in error["details"]}, error
    untouched.check()


def test_invalid_json_and_wrong_content(api: Api, stack: Stack, unique: str) -> None:
    untouched = Untouched(stack, QUARANTINE)
    response = api.http.post(
        "/api/v1/tasks", content=b'{"task": "math.number_sum", ', headers={"Content-Type": "application/json"}
    )
    error = assert_error(response, 422, "validation_error")
    assert "invalid JSON" in error["details"][0]["message"]
    assert_error(api.http.post("/api/v1/tasks/status", json={"task_ids": []}), 422, "validation_error")
    too_many = {"task_ids": [f"id-{i}" for i in range(1001)]}
    assert_error(api.http.post("/api/v1/tasks/status", json=too_many), 422, "validation_error")
    untouched.check()


@pytest.mark.parametrize(
    "schedule, message",
    [
        ({"type": "cron", "value": "61 * * * *"}, "invalid cron minute '61'"),
        ({"type": "cron", "value": "* * *"}, "has 3 fields; expected 5"),
        ({"type": "interval", "value": 0}, "interval must be a positive number"),
        ({"type": "interval", "value": 1e12}, "interval must be a positive number"),
        ({"type": "interval", "value": 1e-9}, "interval must be a positive number"),
        ({"type": "cron", "value": "0 0 30 2 *"}, "never fires"),
        ({"type": "interval", "value": "soon"}, "interval must be a number of seconds"),
        ({"type": "once", "value": "2001-01-01T00:00:00+00:00"}, "is in the past"),
        ({"type": "weekly", "value": 1}, "schedule.type"),
    ],
)
def test_bad_schedules_are_422(api: Api, stack: Stack, unique: str, schedule: dict, message: str) -> None:
    untouched = Untouched(stack, QUARANTINE)
    body = {"name": f"bad-{unique}", "task": "math.number_sum", "schedule": schedule, "args": [1, 2]}
    error = assert_error(api.http.post("/api/v1/periodic-tasks", json=body), 422, "validation_error")
    assert message in error["message"] or message in str(error["details"]), error
    untouched.check()


def test_chord_without_callback_is_422(api: Api, stack: Stack, unique: str) -> None:
    untouched = Untouched(stack, QUARANTINE)
    body = {"type": "chord", "steps": [{"task": "math.number_sum", "args": [1, 1]}]}
    error = assert_error(api.http.post("/api/v1/workflows", json=body), 422, "validation_error")
    assert error["details"][0]["field"] == "callback"
    untouched.check()


def test_oversized_body_is_413(api: Api, stack: Stack, unique: str) -> None:
    untouched = Untouched(stack, QUARANTINE)
    big = {"task": "math.number_sum", "args": ["x" * (1024 * 1024 + 10)], "queue": QUARANTINE}
    assert_error(api.http.post("/api/v1/tasks", json=big), 413, "payload_too_large")

    def chunks():
        yield b'{"task": "math.number_sum", "args": ["'
        for _ in range(300):
            yield b"y" * 4096
        yield b'"]}'

    response = api.http.post("/api/v1/tasks", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(response, 413, "payload_too_large")
    untouched.check()


def test_unknown_route_and_method_use_the_error_shape(api: Api) -> None:
    assert_error(api.http.get("/api/v1/nothing-here"), 404, "not_found")
    assert_error(api.http.put("/api/v1/tasks"), 405, "method_not_allowed")


def test_long_poll_answers_when_the_task_finishes(api: Api, unique: str) -> None:
    task_id = api.http.post("/api/v1/tasks", json={"task": "tests.sleep", "args": [1.0]}).json()["task_id"]
    started = time.monotonic()
    info = api.http.get(f"/api/v1/tasks/{task_id}", params={"wait": 20}).json()
    elapsed = time.monotonic() - started
    assert info["status"] == "SUCCESS" and info["result"] == 1.0
    assert 0.8 < elapsed < 5, elapsed

    started = time.monotonic()
    pending = api.http.get(f"/api/v1/tasks/never-{unique}", params={"wait": 0.5}).json()
    assert pending["status"] == "PENDING" and 0.4 < time.monotonic() - started < 3
    assert_error(api.http.get(f"/api/v1/tasks/{task_id}", params={"wait": 61}), 422, "validation_error")


def test_many_concurrent_long_polls_share_one_listener(api: Api) -> None:
    async def run() -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with httpx.AsyncClient(base_url=api.base_url, headers=headers, timeout=60) as http:
            ids = [
                (await http.post("/api/v1/tasks", json={"task": "tests.sleep", "args": [0.2]})).json()[
                    "task_id"
                ]
                for _ in range(60)
            ]
            replies = await asyncio.gather(
                *(http.get(f"/api/v1/tasks/{i}", params={"wait": 30}) for i in ids)
            )
            return [r.json() for r in replies]

    infos = asyncio.run(run())
    assert [i["status"] for i in infos] == ["SUCCESS"] * 60


def test_submit_and_wait_in_one_request(api: Api, stack: Stack, unique: str) -> None:
    done = api.http.post(
        "/api/v1/tasks",
        params={"wait": 20},
        json={"task": "math.number_sum", "args": [2, 3], "task_id": f"sw-{unique}"},
    )
    assert done.status_code == 200
    info = done.json()
    assert set(info) == TASK_FIELDS
    assert info["task_id"] == f"sw-{unique}" and info["status"] == "SUCCESS" and info["result"] == 5

    # not done in time: parked in a queue no worker consumes, so it is exactly PENDING
    parked = {"task": "tests.sleep", "args": [2], "queue": QUARANTINE}
    try:
        slow = api.http.post("/api/v1/tasks", params={"wait": 0.3}, json=parked)
        assert slow.status_code == 202 and slow.json()["status"] == "PENDING"
    finally:
        for key in stack.db.client.keys(f"{QUARANTINE}*"):
            stack.db.client.delete(key)
    assert_error(
        api.http.post("/api/v1/tasks", params={"wait": 1}, json={"task": "tests.internal_only"}),
        404,
        "unknown_task",
    )


def test_dead_letters_list_show_resubmit_and_delete(api: Api, client, unique: str) -> None:  # type: ignore[no-untyped-def]
    from pkg.celery_task._deadletter import dead_letters_for

    task_id = api.http.post("/api/v1/tasks", json={"task": "tests.always_fails", "args": [unique]}).json()[
        "task_id"
    ]
    assert wait_done(api, task_id)["status"] == "FAILURE"
    entry = wait_for(lambda: _dead_letter(api, task_id), timeout=20, what="the dead letter")
    assert (
        entry["reason"] == "failed" and entry["error"]["type"] == "TransientError" and entry["resubmittable"]
    )
    shown = api.http.get(f"/api/v1/dead-letters/{entry['id']}").json()
    assert shown["task_id"] == task_id and shown["args"] == [unique] and shown["traceback"]

    resubmitted = api.http.post(f"/api/v1/dead-letters/{entry['id']}/resubmit")
    assert resubmitted.status_code == 202 and resubmitted.json() == {"task_id": task_id, "status": "PENDING"}
    wait_for(lambda: _dead_letter(api, task_id), timeout=20, what="the re-submitted task to fail again")
    assert api.http.delete(f"/api/v1/dead-letters/{entry['id']}").status_code == 204
    assert_error(api.http.get(f"/api/v1/dead-letters/{entry['id']}"), 404, "dead_letter_not_found")
    assert_error(api.http.delete(f"/api/v1/dead-letters/{entry['id']}"), 404, "dead_letter_not_found")

    undecodable = dead_letters_for(client.app).record(
        {"id": f"raw-{unique}", "reason": "undecodable", "body": "{not json", "resubmittable": False}
    )
    assert_error(api.http.post(f"/api/v1/dead-letters/{undecodable}/resubmit"), 409, "conflict")
    api.http.delete(f"/api/v1/dead-letters/{undecodable}")


def _dead_letter(api: Api, task_id: str) -> dict[str, Any] | None:
    page = api.http.get("/api/v1/dead-letters", params={"limit": 1000}).json()
    assert set(page) == {"total", "dead_letters"}
    return next((e for e in page["dead_letters"] if e["task_id"] == task_id), None)
