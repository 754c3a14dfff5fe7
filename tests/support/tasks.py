"""Tasks and hooks used by the integration tests; workers load them with
``CELERY_EXTRA_INCLUDE=tests.support.tasks``. They record what happened in the test's
Redis database (``TASKSYS_TEST_REDIS_URL``) so tests can check it from outside."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import text

from internal.infra.celery import celery_client
from internal.infra.database import session_scope
from internal.infra.redis import get_redis
from pkg.celery_task import BaseTask, TaskRequest, TransientError

app = celery_client.app
_sync_clients: dict[int, redis.Redis] = {}


def test_redis() -> redis.Redis:
    """A sync client on the test's Redis database, one per process."""
    pid = os.getpid()
    if pid not in _sync_clients:
        _sync_clients[pid] = redis.Redis.from_url(os.environ["TASKSYS_TEST_REDIS_URL"])
    return _sync_clients[pid]


def _event(value: Any) -> str:
    return json.dumps({"value": value, "t": time.time(), "pid": os.getpid(), "host": socket.gethostname()})


@app.task(name="tests.record", public=True)
async def record(key: str, value: Any = None, delay: float = 0.0) -> Any:
    """Append an event to the list ``key`` using the async client the startup hook made,
    after ``delay`` seconds of (non-blocking) work."""
    if delay:
        await asyncio.sleep(delay)
    await get_redis().rpush(key, _event(value))
    return value


@app.task(name="tests.sleep", bind=True, public=True)
def sleep(self: BaseTask, seconds: float, key: str | None = None) -> float:
    """Sleep in small steps, recording ``started`` / ``finished`` under ``key``."""
    client = test_redis()
    if key:
        client.rpush(key, _event("started"))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    if key:
        client.rpush(key, _event("finished"))
    return seconds


@app.task(name="tests.flaky", bind=True, public=True, retry_countdown=0.2, max_retries=5)
def flaky(self: BaseTask, key: str, failures: int) -> int:
    """Fail with a transient error ``failures`` times, then succeed with the attempt count."""
    attempt = int(test_redis().incr(key))
    if attempt <= failures:
        raise TransientError(f"attempt {attempt} of {failures} planned failures")
    return attempt


@app.task(name="tests.total", public=True)
def total(values: list[float]) -> float:
    """Sum a list (chord callback)."""
    return sum(values)


@app.task(name="tests.progress", bind=True, public=True)
def progress(self: BaseTask, steps: int, delay: float = 0.2) -> int:
    """Report PROGRESS for each step."""
    for step in range(1, steps + 1):
        self.report_progress(step, steps, f"step {step} of {steps}")
        time.sleep(delay)
    return steps


@app.task(name="tests.hook_probe", public=True)
async def hook_probe() -> dict[str, Any]:
    """Show that this process's Redis client and DB engine (made by the startup hook) work
    on the loop this task runs on."""
    client = get_redis()
    pong = await client.ping()
    async with session_scope() as session:
        one = (await session.execute(text("SELECT 1"))).scalar_one()
    return {
        "pid": os.getpid(),
        "redis_client": id(client),
        "loop": id(asyncio.get_running_loop()),
        "ping": pong,
        "db": one,
    }


@app.task(name="tests.work", bind=True, public=True)
def work(self: BaseTask, ms: float, key: str) -> str:
    """Busy for ``ms`` milliseconds, then record this run's task id under ``key``."""
    time.sleep(ms / 1000)
    test_redis().rpush(key, self.request.id)
    return str(self.request.id)


@app.task(name="tests.soft_limited", bind=True, public=True)
def soft_limited(self: BaseTask, seconds: float, key: str) -> None:
    """Run past the soft time limit; record the clean-up, then let the error through."""
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
    except SoftTimeLimitExceeded:
        test_redis().rpush(key, f"cleaned-up:{self.request.id}")
        raise


@app.task(name="tests.stubborn", bind=True, public=True)
def stubborn(self: BaseTask, seconds: float, key: str) -> None:
    """Ignore the soft time limit and keep going: only the hard limit stops it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            test_redis().rpush(key, f"ignored-soft-limit:{self.request.id}")


_leaked: list[bytearray] = []


@app.task(name="tests.leak", bind=True, public=True)
def leak(self: BaseTask, megabytes: int, key: str) -> int:
    """Keep ``megabytes`` of memory for good (a leaking task); record the process."""
    _leaked.append(bytearray(megabytes * 1024 * 1024))
    test_redis().rpush(key, f"{self.request.id}:{os.getpid()}")
    return os.getpid()


@app.task(name="tests.always_fails", bind=True, public=True, retry_countdown=0.1, max_retries=2)
def always_fails(self: BaseTask, note: str) -> None:
    """A transient error that never clears: retried, then dead-lettered."""
    raise TransientError(f"still failing: {note}")


@app.task(name="tests.internal_only")
def internal_only() -> str:
    """Not marked public: the HTTP API must refuse it."""
    return "should never run from the API"


@app.task(name="tests.defaults", expires=600, time_limit=30, soft_time_limit=20)
def defaults(x: int = 0) -> int:
    """A task with its own execution defaults (expiry, time limits); Celery calls a
    task-level priority or queue deprecated, so routes cover those."""
    return x


@app.task(name="tests.fan_out", bind=True)
def fan_out(self: BaseTask, how: str, queue: str) -> list[str]:
    """Send two ``math.number_sum`` children to ``queue`` with ``app.send_task``,
    ``celery_client.submit`` or ``celery_client.submit_many``; their ids."""
    if how == "send_task":
        return [app.send_task("math.number_sum", [i, i], queue=queue).id for i in range(2)]
    if how == "submit":
        return [celery_client.submit("math.number_sum", [i, i], queue=queue).id for i in range(2)]
    return celery_client.submit_many([TaskRequest("math.number_sum", [i, i], queue=queue) for i in range(2)])


@app.task(name="tests.dedupe_children", bind=True)
def dedupe_children(self: BaseTask, key: str, queue: str) -> list[list[Any]]:
    """Submit two ``tests.sleep`` children to ``queue`` with one ``dedupe_key`` from
    inside a task; ``[id, deduplicated]`` of each."""
    sent = [celery_client.submit("tests.sleep", [0.1], queue=queue, dedupe_key=key) for _ in range(2)]
    return [[result.id, result.deduplicated] for result in sent]


def _hook_dir() -> Path | None:
    value = os.environ.get("TASKSYS_TEST_HOOK_DIR")
    return Path(value) if value else None


def _test_startup() -> None:
    if os.environ.get("TASKSYS_TEST_FAIL_STARTUP") == "1":
        raise RuntimeError("test startup hook was told to fail")
    directory = _hook_dir()
    if directory is not None:
        (directory / f"started-{os.getpid()}").write_text(str(time.time()))


async def _test_shutdown() -> None:
    directory = _hook_dir()
    if directory is not None:
        (directory / f"stopped-{os.getpid()}").write_text(str(time.time()))


celery_client.register_worker_hooks(on_startup=_test_startup, on_shutdown=_test_shutdown)
