"""Tasks for the hardening tests (poison messages, Redis out of memory, log forging);
workers load them with ``CELERY_EXTRA_INCLUDE=tests.support.tasks,tests.support.hardening_tasks``.

Runs are counted in files, not in Redis, so a task still records that it ran while
Redis refuses writes (out of memory)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from internal.infra.celery import celery_client
from tests.support.tasks import test_redis

app = celery_client.app

#: The ``CELERY_EXTRA_INCLUDE`` value that loads these tasks next to the usual test tasks.
INCLUDE = "tests.support.tasks,tests.support.hardening_tasks"

#: Name of the extra static beat entry added when ``TASKSYS_TEST_STATIC_TICK_FILE`` is
#: set: every second it appends a run to that file (beat imports this module at start).
STATIC_TICK = "hardening_tick_1s"
_tick_file = os.environ.get("TASKSYS_TEST_STATIC_TICK_FILE")
if _tick_file:
    app.conf.beat_schedule = {
        **app.conf.beat_schedule,
        STATIC_TICK: {"task": "tests.hardening.append_file", "schedule": 1.0, "args": (_tick_file,)},
    }


def _append_line(path: str, task_id: str) -> str:
    """Append ``task_id`` to the file ``path`` in one ``write`` of one line with
    O_APPEND (lines from several processes never mix)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{task_id}\n".encode())
    finally:
        os.close(fd)
    return task_id


@app.task(name="tests.hardening.append_file", bind=True, public=True)
def append_file(self: Any, path: str, ms: float = 0.0) -> str:
    """Work ``ms`` milliseconds, then append this run's task id to the file ``path``."""
    time.sleep(ms / 1000)
    return _append_line(path, str(self.request.id))


@app.task(name="tests.hardening.append_file_async", bind=True, public=True)
async def append_file_async(self: Any, path: str, ms: float = 0.0) -> str:
    """:func:`append_file` with an ``async def`` body that awaits its ``ms``."""
    await asyncio.sleep(ms / 1000)
    return _append_line(path, str(self.request.id))


@app.task(name="tests.hardening.accept", bind=True, public=True)
def accept(self: Any, key: str, *args: Any, **kwargs: Any) -> int:
    """Take any arguments; record this run's task id under ``key`` in the test Redis."""
    test_redis().rpush(key, str(self.request.id))
    return len(args) + len(kwargs)


def read_runs(path: Path) -> list[str]:
    """Task ids recorded by :func:`append_file` in ``path``, in order (duplicates kept)."""
    try:
        return [line for line in path.read_text().splitlines() if line]
    except FileNotFoundError:
        return []
