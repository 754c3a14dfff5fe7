"""The history and stats API against a real uvicorn and a real database holding a
known set of history rows (inserted directly, so the numbers are exact)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import create_async_engine

from internal.models import TaskHistory, TaskTransition
from tests.conftest import Api, Stack

BASE = datetime(2026, 1, 5, 12, 0, 0)
PREFIX = "hist-api-"


def _row(i: int, *, task: str, status: str, runtime: float | None, retries: int = 0) -> dict[str, Any]:
    at = BASE + timedelta(seconds=i)
    return {
        "task_id": f"{PREFIX}{i:03d}",
        "task": task,
        "status": status,
        "queue": "default" if i % 2 else "other",
        "worker": "w1",
        "args": "[1, 2]",
        "kwargs": '{"password": "***"}',
        "result": "3" if status == "SUCCESS" else None,
        "error_type": "ValueError" if status == "FAILURE" else None,
        "error_message": "bad" if status == "FAILURE" else None,
        "traceback": None,
        "retries": retries,
        "parent_id": f"{PREFIX}000" if i in (1, 2) else None,
        "root_id": None,
        "seen_at": at,
        "sent_at": at,
        "received_at": at,
        "started_at": at,
        "finished_at": at + timedelta(seconds=1) if status in ("SUCCESS", "FAILURE", "REVOKED") else None,
        "runtime_ms": runtime,
    }


ROWS = (
    [_row(i, task="math.add", status="SUCCESS", runtime=float(i)) for i in range(10)]
    + [_row(10 + i, task="math.div", status="FAILURE", runtime=5.0, retries=1) for i in range(3)]
    + [_row(13, task="math.div", status="SUCCESS", runtime=1.0)]
    + [_row(14, task="math.add", status="REVOKED", runtime=None)]
)


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> None:
    async def run(rows: list[dict[str, Any]]) -> None:
        engine = create_async_engine(stack.database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(delete(TaskHistory).where(TaskHistory.task_id.like(f"{PREFIX}%")))
                await conn.execute(delete(TaskTransition).where(TaskTransition.task_id.like(f"{PREFIX}%")))
                if rows:
                    await conn.execute(insert(TaskHistory), rows)
                    await conn.execute(
                        insert(TaskTransition),
                        [
                            {"record_id": f"{PREFIX}0-{t}", "task_id": f"{PREFIX}000", "type": t,
                             "at": BASE + timedelta(milliseconds=n), "worker": "w1", "detail": None}
                            for n, t in enumerate(("sent", "received", "started", "succeeded"))
                        ],
                    )  # fmt: skip
        finally:
            await engine.dispose()

    asyncio.run(run(ROWS))


RANGE = {"since": "2026-01-05T11:00:00Z", "until": "2026-01-05T13:00:00Z"}


def test_list_newest_first_with_cursor_pages(api: Api, seeded: None) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"q": "math.", "limit": 4, **RANGE}
        if cursor:
            params["cursor"] = cursor
        r = api.http.get("/api/v1/history", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        seen += [item["task_id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    ours = [s for s in seen if s.startswith(PREFIX)]
    assert ours == [f"{PREFIX}{i:03d}" for i in range(14, -1, -1)]


def test_filters_and_search(api: Api, seeded: None) -> None:
    def ids(**params: Any) -> list[str]:
        r = api.http.get("/api/v1/history", params={**RANGE, **params})
        assert r.status_code == 200, r.text
        return [i["task_id"] for i in r.json()["items"] if i["task_id"].startswith(PREFIX)]

    assert len(ids(task="math.div")) == 4
    assert len(ids(status="FAILURE")) == 3
    assert ids(q=f"{PREFIX}007") == [f"{PREFIX}007"]
    assert len(ids(queue="other", task="math.add")) == 6  # ids 0,2,4,6,8,14
    failed = api.http.get("/api/v1/history", params={**RANGE, "status": "FAILURE"}).json()["items"][0]
    assert failed["error"] == {"type": "ValueError", "message": "bad"}


def test_detail_events_and_children(api: Api, seeded: None) -> None:
    r = api.http.get(f"/api/v1/history/{PREFIX}000")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [e["type"] for e in body["events"]] == ["sent", "received", "started", "succeeded"]
    assert sorted(c["task_id"] for c in body["children"]) == [f"{PREFIX}001", f"{PREFIX}002"]
    missing = api.http.get(f"/api/v1/history/{PREFIX}nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_stats_exact_numbers(api: Api, seeded: None) -> None:
    r = api.http.get("/api/v1/stats/tasks", params=RANGE)
    assert r.status_code == 200, r.text
    tasks = r.json()["tasks"]
    add, div = tasks["math.add"], tasks["math.div"]
    assert (add["total"], add["succeeded"], add["failed"], add["revoked"]) == (11, 10, 0, 1)
    assert add["runtime_ms"] == {"p50": 4.0, "p95": 9.0, "p99": 9.0, "max": 9.0}
    assert (div["total"], div["failed"], div["retried"]) == (4, 3, 3)
    assert div["failure_rate"] == 0.75
    t = api.http.get("/api/v1/stats/throughput", params={**RANGE, "bucket": 3600})
    assert t.status_code == 200, t.text
    buckets = t.json()["buckets"]
    assert len(buckets) == 2
    assert buckets[1]["counts"] == {"SUCCESS": 11, "FAILURE": 3, "REVOKED": 1}
    q = api.http.get("/api/v1/stats/queues", params=RANGE)
    assert q.status_code == 200, q.text


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v1/history", {"cursor": "not-a-cursor"}, "cursor"),
        ("/api/v1/history", {"cursor": "W1tdXQ"}, "cursor"),
        ("/api/v1/history", {"limit": 100000}, "limit"),
        ("/api/v1/history", {"status": "<script>"}, "status"),
        ("/api/v1/stats/tasks", {"since": "2026-01-06T00:00:00Z", "until": "2026-01-05T00:00:00Z"}, "since"),
        ("/api/v1/stats/tasks", {"since": "2020-01-01T00:00:00Z", "until": "2026-01-05T00:00:00Z"}, "since"),
        ("/api/v1/stats/throughput", {**RANGE, "bucket": 0}, "bucket"),
        ("/api/v1/stats/throughput", {"since": "2026-01-01T00:00:00Z", "until": "2026-01-20T00:00:00Z",
                                      "bucket": 1}, "bucket"),
        ("/api/v1/stats/queues", {"since": "yesterday"}, "since"),
    ],
)  # fmt: skip
def test_bad_params_are_422(api: Api, path: str, params: dict[str, Any], field: str) -> None:
    r = api.http.get(path, params=params)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert field in r.text


def test_needs_token(api: Api) -> None:
    import httpx

    assert httpx.get(api.base_url + "/api/v1/history", timeout=10).status_code == 401


def test_database_down_is_a_typed_error() -> None:
    """A database that refuses connections (nothing listens on the port) raises
    HistoryUnavailableError, which the API answers with 503."""
    from internal.services import history
    from tests.support.services import free_port

    async def run() -> None:
        engine = create_async_engine(f"mysql+asyncmy://root@127.0.0.1:{free_port()}/test")
        try:
            with pytest.raises(history.HistoryUnavailableError):
                await history.list_history(engine=engine, limit=10)
            with pytest.raises(history.HistoryUnavailableError):
                await history.task_stats(engine=engine, since=None, until=None)
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_dashboard_reads_the_same_history(stack: Stack, seeded: None) -> None:
    """The dashboard's reader answers from the same rows: pages, one task with its
    events, stats; stored argument text comes back as values."""
    from internal.dashboard.history_reader import ServiceHistory

    since, until = BASE - timedelta(hours=1), BASE + timedelta(hours=1)

    async def run() -> tuple[Any, ...]:
        engine = create_async_engine(stack.database_url)
        try:
            reader = ServiceHistory(engine)
            query = {"q": "math.div", "since": since, "until": until}
            first = await reader.page({**query, "junk": "x"}, 2, None)
            second = await reader.page(query, 2, first["next_cursor"])
            one = await reader.get(f"{PREFIX}000")
            missing = await reader.get(f"{PREFIX}nope")
            stats = await reader.task_stats(since, until)
            return first, second, one, missing, stats
        finally:
            await engine.dispose()

    first, second, one, missing, stats = asyncio.run(run())
    ids = [i["task_id"] for i in first["items"] + second["items"]]
    assert ids == [f"{PREFIX}{i:03d}" for i in (13, 12, 11, 10)]
    assert second["next_cursor"] is None
    assert one is not None and one["args"] == [1, 2] and one["kwargs"] == {"password": "***"}
    assert "args_truncated" not in one
    assert [e["type"] for e in one["events"]] == ["sent", "received", "started", "succeeded"]
    assert {c["task_id"] for c in one["children"]} == {f"{PREFIX}001", f"{PREFIX}002"}
    assert missing is None
    assert stats["math.div"]["failed"] == 3 and stats["math.div"]["succeeded"] == 1
