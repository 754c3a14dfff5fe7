"""The history recorder as a real process against the session's real worker: success,
failure, retry and revoke give the right rows and transitions; tasks that ran while
the recorder was stopped are all written once it is back; a replay is a no-op; the
retention sweep deletes old rows only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from internal.infra.database import open_engine
from internal.schemas import HistoryDetail
from internal.services.history import HistoryNotFoundError, get_task_history
from internal.services.history_recorder import apply_records, delete_older_than
from pkg.celery_task import CeleryClient
from tests.conftest import Stack
from tests.support.procs import ManagedProcess, service_env, start_history_recorder, wait_for

pytestmark = pytest.mark.integration

T = TypeVar("T")


def _db(stack: Stack, work: Callable[[Any], Awaitable[T]]) -> T:
    async def go() -> T:
        engine = await open_engine(stack.database_url, verify=False)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _detail(stack: Stack, task_id: str) -> HistoryDetail | None:
    async def work(engine: Any) -> HistoryDetail | None:
        try:
            return await get_task_history(engine=engine, task_id=task_id)
        except HistoryNotFoundError:
            return None

    return _db(stack, work)


def _final(stack: Stack, task_id: str, status: str, timeout: float = 30, events: int = 0) -> HistoryDetail:
    """The row once it has ``status`` and at least ``events`` transitions (the worker's
    main process and its pool child flush separately, so they may land in any order)."""

    def done() -> HistoryDetail | None:
        detail = _detail(stack, task_id)
        ok = detail is not None and detail.status == status and len(detail.events) >= events
        return detail if ok else None

    return wait_for(done, timeout, interval=0.3, what=f"{task_id} recorded as {status}")


def _recorder(stack: Stack, name: str) -> ManagedProcess:
    return start_history_recorder(service_env(stack.db, database_url=stack.database_url), stack.log_dir, name)


@pytest.fixture(scope="module")
def recorder(stack: Stack) -> Iterator[ManagedProcess]:
    proc = _recorder(stack, "recorder-1")
    yield proc
    proc.stop()


def test_success_row_and_transitions(stack: Stack, client: CeleryClient, recorder: ManagedProcess) -> None:
    result = client.submit("math.number_sum", kwargs={"x": 2, "y": 3})
    assert result.get(timeout=20) == 5
    detail = _final(stack, result.id, "SUCCESS", events=4)
    assert detail.task == "math.number_sum" and detail.queue == "default"
    assert detail.result == "5" and detail.runtime_ms is not None
    assert detail.sent_at and detail.received_at and detail.started_at and detail.finished_at
    assert detail.sent_at <= detail.received_at
    assert [e.type for e in detail.events] == ["sent", "received", "started", "succeeded"]


def test_failure_row(stack: Stack, client: CeleryClient, recorder: ManagedProcess) -> None:
    result = client.submit("math.number_sum", ("a", 1))
    client.get_result(result.id, timeout=20, propagate=False)
    detail = _final(stack, result.id, "FAILURE")
    assert detail.error is not None and "x must be a number" in (detail.error.message or "")
    assert detail.traceback and "Traceback" in detail.traceback


def test_retry_row(stack: Stack, client: CeleryClient, recorder: ManagedProcess, unique: str) -> None:
    result = client.submit("tests.flaky", (f"history-rec-flaky-{unique}", 2))
    assert result.get(timeout=30) == 3
    detail = _final(stack, result.id, "SUCCESS", events=7)
    assert detail.retries == 2
    types = [e.type for e in detail.events]
    assert types.count("retried") == 2 and types.count("started") == 3 and types[-1] == "succeeded"


def test_revoke_row(stack: Stack, client: CeleryClient, recorder: ManagedProcess) -> None:
    result = client.submit("math.number_sum", (1, 1), countdown=2)
    wait_for(lambda: _detail(stack, result.id), 20, interval=0.3, what="received row")
    client.revoke(result.id)
    detail = _final(stack, result.id, "REVOKED")
    assert [e.type for e in detail.events][-1] == "revoked"


def test_recorder_outage_loses_nothing(stack: Stack, client: CeleryClient, recorder: ManagedProcess) -> None:
    assert recorder.stop() == 0  # SIGTERM: the batch in hand is written, then a clean exit
    try:
        results = [client.submit("math.number_sum", (i, 1)) for i in range(300)]
        for result in results:
            result.get(timeout=60)
        time.sleep(10)  # the outage: the recorder stays down a while after the tasks ran
    finally:
        recorder.start()
    last = results[-1].id
    _final(stack, last, "SUCCESS", timeout=60)

    async def statuses(engine: Any) -> dict[str, str]:
        from sqlalchemy import select

        from internal.models import TaskHistory

        ids = [r.id for r in results]
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(TaskHistory.task_id, TaskHistory.status).where(TaskHistory.task_id.in_(ids))
            )
            return {row.task_id: row.status for row in rows}

    def all_final() -> dict[str, str] | None:
        # The last task's success need not be the stream's last record (tasks finish
        # out of order), so wait for every row to reach its final status.
        found = _db(stack, statuses)
        return found if len(found) == len(results) and set(found.values()) == {"SUCCESS"} else None

    found = wait_for(all_final, 60, interval=0.5, what="every row to be SUCCESS after the outage")
    assert len(found) == len(results)


def _record(task_id: str, kind: str, at: float, record_id: str) -> dict[str, Any]:
    return {"task_id": task_id, "task": "t", "type": kind, "at": at, "record_id": record_id}


def test_replay_is_a_no_op_and_retention_deletes_old_rows_only(stack: Stack, unique: str) -> None:
    now = datetime.now(UTC)
    old_at = (now - timedelta(days=20)).timestamp()
    new_at = (now - timedelta(days=1)).timestamp()
    records = [
        _record(f"old-{unique}", "received", old_at, f"1-{unique}-a"),
        _record(f"old-{unique}", "succeeded", old_at + 1, f"1-{unique}-b"),
        _record(f"new-{unique}", "received", new_at, f"2-{unique}-a"),
        _record(f"new-{unique}", "failed", new_at + 1, f"2-{unique}-b"),
    ]
    assert _db(stack, lambda e: apply_records(e, records)) == 4
    assert _db(stack, lambda e: apply_records(e, records)) == 0
    new = _detail(stack, f"new-{unique}")
    assert new is not None and new.status == "FAILURE" and len(new.events) == 2

    assert _db(stack, lambda e: delete_older_than(e, 14)) >= 1
    assert _detail(stack, f"old-{unique}") is None
    assert _detail(stack, f"new-{unique}") is not None
