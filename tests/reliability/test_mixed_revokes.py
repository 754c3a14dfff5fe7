"""A revoke sent by another tool (the stock ``celery control revoke`` of a plain Celery
app) is as durable as ``CeleryClient.revoke``: it survives a restart of all our workers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.reliability.conftest import client_for
from tests.support.procs import REPO_ROOT, service_env, start_worker, wait_for
from tests.support.services import RedisDb

COUNTDOWN = 30


def test_a_revoke_from_the_stock_cli_survives_restarting_our_workers(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    queue, key = f"revoke-{unique}", f"revoke-runs-{unique}"
    env = service_env(
        redis_db,
        database_url=f"sqlite+aiosqlite:///{session_tmp}/mixed-revoke.db",
        extra={"STOCK_REDIS_URL": redis_db.url},
    )
    logs = session_tmp / "mixed-revoke"
    client = client_for(redis_db.url)
    name = f"revoke-w-{unique}"
    worker = start_worker(name, env, logs, queues=[queue], concurrency=1)
    try:
        task_id = client.submit("tests.work", [1, key], queue=queue, countdown=COUNTDOWN).id
        due = time.monotonic() + COUNTDOWN
        worker.wait_for_log(rf"Task tests\.work\[{task_id}\] received", timeout=20)
        argv = [sys.executable, "-m", "celery", "-A", "tests.support.stock_app", "control", "revoke", task_id]
        sent = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
        print(f"\n[revoke] stock CLI said: {sent.stdout.strip()!r}")
        assert sent.returncode == 0, sent.stderr
        stored = wait_for(
            lambda: redis_db.client.zscore("tasksys:revoked", task_id),
            timeout=10,
            what="the revoke to reach the shared store",
        )
        worker.stop()
        worker = start_worker(name, env, logs, queues=[queue], concurrency=1)
        wait_for(lambda: time.monotonic() > due + 8, timeout=COUNTDOWN + 30, interval=0.5, what="the ETA")
        runs = redis_db.client.llen(key)
        print(f"[revoke] runs after the ETA: {runs}; stored at {stored}")
        assert runs == 0
        assert redis_db.client.zscore("tasksys:revoked", task_id) is not None
        after = client.submit("tests.work", [1, f"{key}-after"], queue=queue).id
        wait_for(lambda: redis_db.client.llen(f"{key}-after") >= 1, timeout=30, what="a later task to run")
        assert redis_db.client.lrange(f"{key}-after", 0, -1) == [after.encode()]
    finally:
        worker.stop()
