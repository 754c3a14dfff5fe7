"""Tools that inspect the broker next to our workers: a real Flower reads our queue
lengths (all ten priority sub-queues), and ``celery purge`` with and without our app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from pkg.celery_task.worker.transport import redis_priority_queue_keys
from tests.reliability.conftest import client_for
from tests.support.procs import CELERY_APP, REPO_ROOT, ManagedProcess, service_env, start_worker, wait_for
from tests.support.services import RedisDb, free_port

PRIORITIES = [0, 1, 4, 5, 8, 9]


def _env(db: RedisDb, tmp: Path) -> dict[str, str]:
    return service_env(
        db, database_url=f"sqlite+aiosqlite:///{tmp}/mixed.db", extra={"STOCK_REDIS_URL": db.url}
    )


def test_flower_reads_our_queue_lengths_and_broker_page(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    queue, key = f"flower-{unique}", f"flower-runs-{unique}"
    env, logs = _env(redis_db, session_tmp), session_tmp / "mixed-flower"
    client = client_for(redis_db.url)
    worker = start_worker(f"flower-w-{unique}", env, logs, queues=[queue], concurrency=1)
    flower = None
    try:
        client.submit("tests.sleep", [20, key], queue=queue)
        wait_for(lambda: redis_db.client.llen(key) >= 1, timeout=30, what="the blocking task to start")
        for priority in PRIORITIES:  # wait behind it, in six different sub-queues
            client.submit("tests.work", [1, f"{key}-rest"], queue=queue, priority=priority)
        port = free_port()
        argv = [sys.executable, "-m", "celery", "-A", CELERY_APP, "flower", "--address=127.0.0.1"]
        argv.append(f"--port={port}")
        flower = ManagedProcess(f"flower-{unique}", argv, {**env, "FLOWER_UNAUTHENTICATED_API": "true"}, logs)
        flower.start()
        base = f"http://127.0.0.1:{port}"

        def listed() -> bool:
            try:
                body = httpx.get(f"{base}/api/workers", params={"refresh": "1"}, timeout=10).json()
            except (httpx.HTTPError, ValueError):
                assert flower is not None and flower.alive(), flower.log()[-3000:] if flower else ""
                return False
            return any(name.startswith(f"flower-w-{unique}@") for name in body)

        wait_for(listed, timeout=60, interval=1, what="Flower to list our worker")
        lengths = httpx.get(f"{base}/api/queues/length", timeout=10)
        page = httpx.get(f"{base}/broker", timeout=10)
        print(f"\n[flower] queues/length -> {lengths.status_code} {lengths.text}; broker {page.status_code}")
        assert lengths.status_code == 200, lengths.text
        assert {"name": queue, "messages": len(PRIORITIES)} in lengths.json()["active_queues"]
        assert page.status_code == 200 and "redis://" in page.text and queue in page.text
    finally:
        if flower is not None:
            flower.stop()
        worker.stop()


def _purge(app: str, queue: str, env: dict[str, str]) -> str:
    argv = [sys.executable, "-m", "celery", "-A", app, "purge", "-f", "-Q", queue]
    done = subprocess.run(
        argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_our_purge_empties_all_ten_sub_queues_and_stock_purge_leaves_six(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    queue = f"purge-{unique}"
    env = _env(redis_db, session_tmp)
    client = client_for(redis_db.url)
    keys = redis_priority_queue_keys(queue)

    def fill() -> None:
        for priority in range(10):
            client.submit("tests.work", [1, f"purge-runs-{unique}"], queue=queue, priority=priority)
        assert [redis_db.client.llen(k) for k in keys] == [1] * 10

    fill()
    stock_said = _purge("tests.support.stock_app", queue, env)
    left = sorted(k for k in keys if redis_db.client.llen(k))
    left_steps = [k.rsplit("\x06\x16", 1)[-1] for k in left]
    print(f"\n[purge] stock: {stock_said!r}; sub-queues left: {left_steps}")
    assert left_steps == ["1", "2", "4", "5", "7", "8"]

    for k in keys:
        redis_db.client.delete(k)
    fill()
    ours_said = _purge(CELERY_APP, queue, env)
    print(f"[purge] ours: {ours_said!r}")
    assert [redis_db.client.llen(k) for k in keys] == [0] * 10
