"""TimerCompaction against a real worker: with time limits set, every finished task
leaves a cancelled time-limit timer in the event loop's heap until it would have come
due (minutes later); the step drops them within its interval, so after a burst of
tasks the heap holds no cancelled entries and is back to its size before the burst."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from internal.config.setting import RedisSettings, load_settings
from internal.infra.celery import build_celery_client
from pkg.celery_task.worker.timers import TimerCompaction
from tests.support.procs import service_env, start_worker, wait_for
from tests.support.services import RedisDb
from tests.support.worker_probe import INCLUDE

pytestmark = pytest.mark.integration

N = 300


def _timer(client: Any, hostname: str) -> dict[str, int]:
    replies = client.app.control.broadcast(
        "tasksys_timer_entries", reply=True, destination=[hostname], timeout=3
    )
    assert replies, f"{hostname} did not answer the timer probe"
    return dict(replies[0][hostname])


def test_cancelled_time_limit_timers_do_not_pile_up(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    settings = load_settings(env_file=None)
    settings.redis = RedisSettings(db=redis_db.number)
    assert settings.celery.task_soft_time_limit >= 60, "each task must leave a timer due minutes later"
    client = build_celery_client(settings)
    queue, key = f"timers-{unique}", f"timer-runs-{unique}"
    name = f"timers-{unique}"
    hostname = f"{name}@{socket.gethostname()}"
    env = service_env(
        redis_db,
        database_url=f"sqlite+aiosqlite:///{session_tmp}/timers.db",
        extra={"CELERY_EXTRA_INCLUDE": INCLUDE},
    )
    worker = start_worker(name, env, session_tmp / "timers", queues=[queue], concurrency=2)
    try:
        before = _timer(client, hostname)
        for _ in range(N):
            client.submit("tests.work", [0, key], queue=queue)
        wait_for(lambda: redis_db.client.llen(key) >= N, timeout=60, what=f"{N} tasks to run")
        finished = time.monotonic()
        seen: list[dict[str, int]] = []

        def compacted() -> bool:
            seen.append(_timer(client, hostname))
            return seen[-1]["canceled"] == 0

        wait_for(
            compacted, timeout=2 * TimerCompaction.interval + 5, interval=0.5, what="cancelled timers to go"
        )
        peak = max(s["canceled"] for s in seen)
        print(
            f"\n[timer compaction] tasks={N} before={before} peak_canceled={peak} "
            f"after={seen[-1]} compacted_within_s={time.monotonic() - finished:.1f}"
        )
        assert redis_db.client.llen(key) == N
        assert seen[-1]["entries"] <= before["entries"] + 10, "the heap is back to its size before the burst"
    finally:
        worker.stop()
