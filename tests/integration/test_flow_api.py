"""``/api/v1/limits`` and ``flow_key`` over HTTP against the session's real API and
worker: runtime limits reach the worker, a waiting task reads ``THROTTLED``, bad
limits and keys are refused with 422 and write nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import Api
from tests.support.procs import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture()
def reset(api: Api) -> Iterator[list[str]]:
    """Task names whose runtime limits the test changes; reset afterwards."""
    touched: list[str] = []
    yield touched
    for task in touched:
        api.http.delete(f"/api/v1/limits/{task}")


def test_put_lists_and_resets_limits(api: Api, reset: list[str]) -> None:
    reset.append("tests.record")
    answer = api.http.put("/api/v1/limits/tests.record", json={"global_rate_limit": "100/s"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "task": "tests.record",
        "global_rate_limit": "100/s",
        "rate_limit_per_key": None,
        "concurrency_limit": None,
        "concurrency_limit_per_key": None,
        "source": "runtime",
        "throttled": 0,
    }
    listed = {row["task"]: row for row in api.http.get("/api/v1/limits").json()["items"]}
    assert listed["tests.record"]["global_rate_limit"] == "100/s"
    back = api.http.delete("/api/v1/limits/tests.record")
    assert back.status_code == 200 and back.json()["source"] == "declared"
    assert back.json()["global_rate_limit"] is None
    assert "tests.record" not in {row["task"] for row in api.http.get("/api/v1/limits").json()["items"]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"global_rate_limit": "10/x"}, "global_rate_limit"),
        ({"global_rate_limit": "0/s"}, "global_rate_limit"),
        ({"rate_limit_per_key": "99999999/s"}, "rate_limit_per_key"),
        ({"concurrency_limit": 0}, "concurrency_limit"),
        ({"concurrency_limit_per_key": 10**9}, "concurrency_limit_per_key"),
        ({"concurrency_limit": "3"}, "concurrency_limit"),
        ({"rate_limit": "10/s"}, "rate_limit"),
    ],
)
def test_bad_limits_are_refused_and_write_nothing(api: Api, body: dict[str, object], field: str) -> None:
    answer = api.http.put("/api/v1/limits/tests.record", json=body)
    assert answer.status_code == 422, answer.text
    assert field in answer.text
    assert "tests.record" not in {row["task"] for row in api.http.get("/api/v1/limits").json()["items"]}


@pytest.mark.parametrize("task", ["no.such.task", "celery.backend_cleanup", "tests.record%0a"])
def test_limits_of_unknown_or_internal_tasks_are_not_addressable(api: Api, task: str) -> None:
    answer = api.http.put(f"/api/v1/limits/{task}", json={"concurrency_limit": 1})
    assert answer.status_code in (404, 422), answer.text


@pytest.mark.parametrize("flow_key", [" tenant", ":lock", "a" * 201, "x\ny", 5])
def test_bad_flow_keys_are_refused(api: Api, flow_key: object) -> None:
    answer = api.http.post(
        "/api/v1/tasks", json={"task": "tests.record", "args": ["k"], "flow_key": flow_key}
    )
    assert answer.status_code == 422, answer.text
    assert "flow_key" in answer.text


def test_a_waiting_task_reads_throttled_and_is_counted(api: Api, reset: list[str], unique: str) -> None:
    reset.append("tests.sleep")
    assert (
        api.http.put("/api/v1/limits/tests.sleep", json={"concurrency_limit_per_key": 1}).status_code == 200
    )
    time.sleep(1.5)  # workers read overrides at most a second old
    body = {"task": "tests.sleep", "args": [2.0], "flow_key": f"tenant-{unique}"}
    first = api.http.post("/api/v1/tasks", json=body).json()["task_id"]
    wait_for(lambda: api.http.get(f"/api/v1/tasks/{first}").json()["status"] == "STARTED", timeout=15)
    second = api.http.post("/api/v1/tasks", json={**body, "args": [0.0]}).json()["task_id"]
    wait_for(lambda: api.http.get(f"/api/v1/tasks/{second}").json()["status"] == "THROTTLED", timeout=10)
    # Another key is not held behind them.
    other = api.http.post("/api/v1/tasks?wait=20", json={**body, "args": [0.0], "flow_key": f"x-{unique}"})
    assert other.status_code == 200 and other.json()["status"] == "SUCCESS", other.text
    wait_for(lambda: api.http.get(f"/api/v1/tasks/{second}").json()["status"] == "SUCCESS", timeout=20)
    metrics = api.http.get("/metrics").text
    assert 'tasksys_tasks_throttled_total{task="tests.sleep"}' in metrics, metrics[-2000:]
