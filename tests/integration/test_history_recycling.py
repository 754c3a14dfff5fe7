"""Task history in a prefork worker that replaces its pool children
(``--max-tasks-per-child``, ``--max-memory-per-child``): tasks keep running after each
replacement and every task's history records reach the stream."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from pkg.celery_task._options import Options, configure
from pkg.celery_task.worker.history import TaskHistory
from tests.reliability.conftest import client_for
from tests.support.procs import prefork_only, service_env, start_worker, wait_for
from tests.support.services import RedisDb

pytestmark = pytest.mark.integration

STREAM = "tasksys:history"


def _finished(db: RedisDb) -> dict[str, set[str]]:
    """Record types seen per task id on the history stream."""
    seen: dict[str, set[str]] = {}
    for _, fields in db.client.xrange(STREAM):
        record = json.loads(fields[b"r"])
        seen.setdefault(record["task_id"], set()).add(record["type"])
    return seen


@prefork_only
@pytest.mark.parametrize(
    ("limit", "task", "count"),
    [
        (["--max-tasks-per-child=3"], "tests.work", 60),
        (["--max-memory-per-child=150000"], "tests.leak", 16),
    ],
    ids=["max-tasks", "max-memory"],
)
def test_recycled_children_keep_running_tasks_with_history_on(
    redis_db: RedisDb, session_tmp: Path, unique: str, limit: list[str], task: str, count: int
) -> None:
    queue, key = f"recycle-{unique}", f"recycle-runs-{unique}"
    env = service_env(
        redis_db,
        database_url=f"sqlite+aiosqlite:///{session_tmp}/recycle.db",
        extra={"HISTORY_ENABLED": "true"},
    )
    client = client_for(redis_db.url)
    worker = start_worker(
        f"recycle-{unique}", env, session_tmp / "recycle", queues=[queue], concurrency=2, extra=limit
    )
    args = [25, key] if task == "tests.leak" else [10, key]
    started = time.monotonic()
    try:
        ids = [client.submit(task, args, queue=queue).id for _ in range(count)]
        wait_for(lambda: redis_db.client.llen(key) >= count, timeout=60, interval=0.2, what=f"{count} runs")
        ran_s = time.monotonic() - started
        wait_for(
            lambda: all("succeeded" in _finished(redis_db).get(i, ()) for i in ids),
            timeout=20,
            interval=0.2,
            what="a succeeded history record for every task",
        )
    finally:
        worker.stop()
    log = worker.log()
    children = log.count("redis: connected to")
    print(f"\n[history recycling {limit[0]}] tasks={count} children={children} ran_in={ran_s:.1f}s")
    assert children >= 3, "the pool never replaced a child"
    seen = _finished(redis_db)
    assert all({"received", "started", "succeeded"} <= seen[i] for i in ids)


class _GatedConnection(redis.Connection):
    """A connection whose construction waits for a gate: the pool builds it while
    holding its lock, so a fork meanwhile hands the child that lock held."""

    entered = threading.Event()
    gate = threading.Event()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).entered.set()
        type(self).gate.wait(30)
        super().__init__(*args, **kwargs)


@prefork_only
def test_child_forked_while_the_parent_client_holds_its_pool_lock_records(redis_db: RedisDb) -> None:
    """The fork billiard makes to replace a child can land while the parent's history
    flusher is inside its Redis client; the child must still record and flush."""
    _GatedConnection.entered.clear()
    _GatedConnection.gate.clear()
    app = Celery("history-fork", set_as_current=False)
    configure(app, Options(redis_url=redis_db.url, history=True))
    history = TaskHistory(app)
    history._client = redis.Redis.from_url(redis_db.url, connection_class=_GatedConnection)
    # Only history holds the client (as in a worker), so dropping it would finalize it.
    parent_call = threading.Thread(target=history._client.connection_pool.get_connection, daemon=True)
    parent_call.start()
    try:
        assert _GatedConnection.entered.wait(10)
        pid = os.fork()
        if pid == 0:  # the child: a hang here is killed by the alarm
            code = 1
            try:
                signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's handler
                signal.alarm(15)
                history._add({"type": "received", "task_id": "forked-child"})
                code = 0 if history.flush() == 1 else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        status = None
        while status is None and time.monotonic() < deadline:
            done, raw = os.waitpid(pid, os.WNOHANG)
            status = os.waitstatus_to_exitcode(raw) if done else None
            time.sleep(0.05)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    finally:
        _GatedConnection.gate.set()
        parent_call.join(10)
        history.disconnect()
    assert status == 0, f"the forked child exited with {status} (-14: hung until the alarm)"
    records = [json.loads(fields[b"r"]) for _, fields in redis_db.client.xrange(STREAM)]
    assert [r["task_id"] for r in records] == ["forked-child"]
