"""Tasks for the asyncio-pool tests; workers load them with
``CELERY_EXTRA_INCLUDE=tests.support.tasks,tests.support.async_tasks``. They record
what happened in the test's Redis database (``TASKSYS_TEST_REDIS_URL``)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from internal.infra.celery import celery_client
from tests.support.tasks import test_redis

app = celery_client.app


def _push(key: str, value: Any) -> None:
    test_redis().rpush(key, json.dumps({"value": value, "t": time.time()}))


@app.task(name="aio.nap", public=True)
async def nap(seconds: float, key: str) -> float:
    """Record the start time under ``key``, then await ``seconds``."""
    await asyncio.to_thread(_push, key, "started")
    await asyncio.sleep(seconds)
    return seconds


_running: dict[str, list[int]] = {}


@app.task(name="aio.busy", public=True)
async def busy(spin: float, seconds: float, key: str) -> int:
    """Hold the loop for ``spin`` seconds (CPU work), then await ``seconds``; return the
    most tasks of ``key`` this process ran at once so far."""
    counts = _running.setdefault(key, [0, 0])
    counts[0] += 1
    counts[1] = max(counts)
    try:
        end = time.perf_counter() + spin
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(seconds)
    finally:
        counts[0] -= 1
    return counts[1]


@app.task(name="aio.sync_where", public=True)
def sync_where() -> str:
    """A sync task: the name of the thread it ran in."""
    return threading.current_thread().name


@app.task(name="aio.soft", public=True, soft_time_limit=1)
async def soft(key: str) -> str:
    """Await far past the 1 s soft limit; record that the limit reached the coroutine."""
    try:
        await asyncio.sleep(30)
    except SoftTimeLimitExceeded:
        await asyncio.to_thread(_push, key, "soft-limit")
        return "soft-limit-handled"
    return "slept"


@app.task(name="aio.hard", public=True, time_limit=1)
async def hard(key: str) -> str:
    """Await past the 1 s hard limit; record a clean cancellation."""
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        test_redis().rpush(key, "cancelled")
        raise
    return "slept"


@app.task(name="aio.block", public=True)
async def block(seconds: float) -> str:
    """Block the loop with a sync sleep (what the watchdog reports)."""
    time.sleep(seconds)
    return "blocked"


@app.task(name="aio.whoami", bind=True, public=True)
async def whoami(self: Any, seconds: float) -> dict[str, Any]:
    """Its own request, read before and after an await while others interleave, and a
    progress report from the coroutine."""
    before = self.request.id
    self.report_progress(1, 2, "halfway")
    await asyncio.sleep(seconds)
    return {"before": before, "after": self.request.id, "retries": self.request.retries}


@app.task(name="aio.hold_connection", bind=True, public=True)
async def hold_connection(self: Any, key: str, seconds: float) -> int:
    """Hold one of the startup hook's Redis connections for ``seconds`` (a BLPOP on a key
    nobody writes), as a task awaiting a slow Redis call does; return the retry count
    (a Redis error is retried, so a task that met one returns more than 0)."""
    from internal.infra.redis import get_redis

    await get_redis().blpop([key], timeout=seconds)
    return int(self.request.retries)
