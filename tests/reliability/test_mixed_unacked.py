"""Our workers and stock Celery workers on one Redis database: our 30 s visibility
timeout never restores a message a stock worker holds, and messages our earlier
versions left in kombu's default unacked index still come back."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from celery import Celery

from pkg.celery_task.worker.transport import redis_priority_queue_keys
from tests.reliability.conftest import client_for
from tests.support.procs import ManagedProcess, service_env, start_worker, wait_for
from tests.support.services import RedisDb

#: Longer than our visibility timeout (30 s) plus restore interval (5 s), with margin.
STOCK_COUNTDOWN = 60


def _env(db: RedisDb, tmp: Path) -> dict[str, str]:
    return service_env(
        db, database_url=f"sqlite+aiosqlite:///{tmp}/mixed-unacked.db", extra={"STOCK_REDIS_URL": db.url}
    )


def _start_stock_worker(name: str, queue: str, env: dict[str, str], logs: Path) -> ManagedProcess:
    argv = [sys.executable, "-m", "celery", "-A", "tests.support.stock_app", "worker", "-l", "info"]
    argv += ["-Q", queue, "-c", "1", "-n", f"{name}@%h", "--without-mingle", "--without-gossip"]
    proc = ManagedProcess(name, argv, env, logs).start()
    proc.wait_for_log(r"\bready\.", timeout=60)
    return proc


def _held_tag(db: RedisDb, hash_key: str, task_id: str) -> str | None:
    for tag, raw in db.client.hgetall(hash_key).items():
        if json.loads(raw)[0]["headers"].get("id") == task_id:
            return str(tag.decode())
    return None


def _our_worker_runs_a_task(db: RedisDb, client: Any, queue: str, key: str) -> None:
    task_id = client.submit("tests.work", [1, key], queue=queue).id
    wait_for(lambda: db.client.llen(key) >= 1, timeout=30, what="our worker to run a task")
    assert db.client.lrange(key, 0, -1) == [task_id.encode()]


def test_our_sweep_never_restores_an_eta_message_a_stock_worker_holds(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    ours_q, stock_q, key = f"ours-{unique}", f"stock-{unique}", f"stock-runs-{unique}"
    env, logs = _env(redis_db, session_tmp), session_tmp / "mixed-unacked"
    client = client_for(redis_db.url)
    ours = start_worker(f"ours-{unique}", env, logs, queues=[ours_q], concurrency=1)
    stock = _start_stock_worker(f"stock-{unique}", stock_q, env, logs)
    producer = Celery("stock-producer", broker=redis_db.url, backend=redis_db.url)
    try:
        sent_at = time.monotonic()
        task_id = producer.send_task(
            "stock.record", [key, "eta"], queue=stock_q, countdown=STOCK_COUNTDOWN
        ).id
        stock.wait_for_log(rf"Task stock\.record\[{task_id}\] received", timeout=20)
        tag = _held_tag(redis_db, "unacked", task_id)
        assert tag is not None, "the stock worker holds it in kombu's default index"
        taken_at = redis_db.client.zscore("unacked_index", tag)
        assert _held_tag(redis_db, "tasksys:unacked", task_id) is None
        checks = 0

        def ran() -> bool:
            nonlocal checks
            if redis_db.client.llen(key):
                return True
            score = redis_db.client.zscore("unacked_index", tag)
            if score is None:  # acked between the two reads
                return bool(redis_db.client.llen(key))
            assert score == taken_at, "the stock worker's entry was restored or touched"
            checks += 1
            return False

        wait_for(ran, timeout=STOCK_COUNTDOWN + 30, interval=1, what="the stock ETA task to run")
        ran_after = time.monotonic() - sent_at
        time.sleep(3)
        runs = [json.loads(raw) for raw in redis_db.client.lrange(key, 0, -1)]
        received = stock.log().count(f"Task stock.record[{task_id}] received")
        print(
            f"\n[mixed unacked] stock ETA task: runs={len(runs)} received={received} "
            f"ran_after_s={ran_after:.0f} index_checks={checks} our_log_mentions={ours.log().count(task_id)}"
        )
        assert len(runs) == 1 and received == 1
        assert task_id not in ours.log()
        assert tag not in {t.decode() for t in redis_db.client.zrange("tasksys:unacked_index", 0, -1)}
        _our_worker_runs_a_task(redis_db, client, ours_q, f"{key}-ours")
    finally:
        producer.close()
        stock.stop()
        ours.stop()


def _plant_legacy_entry(db: RedisDb, queue: str, age: float) -> str:
    """Move the one message waiting in ``queue`` into kombu's default unacked index, held
    ``age`` seconds ago: what a worker of our earlier versions that died leaves."""
    for list_key in redis_priority_queue_keys(queue):
        raw = db.client.rpop(list_key)
        if raw is not None:
            break
    else:
        raise AssertionError(f"no message waiting in {queue}")
    payload = json.loads(raw)
    info = payload["properties"]["delivery_info"]
    tag = str(payload["properties"]["delivery_tag"])
    db.client.hset("unacked", tag, json.dumps([payload, info["exchange"], info["routing_key"]]))
    db.client.zadd("unacked_index", {tag: time.time() - age})
    return tag


def test_messages_left_in_the_old_default_index_are_restored_once(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    queue, key = f"legacy-{unique}", f"legacy-runs-{unique}"
    env, logs = _env(redis_db, session_tmp), session_tmp / "mixed-legacy"
    client = client_for(redis_db.url)
    stale_id = client.submit("tests.work", [1, key], queue=queue, priority=9).id
    stale = _plant_legacy_entry(redis_db, queue, age=3700)  # past kombu's 1 h timeout
    young_id = client.submit("tests.work", [1, key], queue=queue, priority=2).id
    young = _plant_legacy_entry(redis_db, queue, age=60)  # as a live stock worker holds it
    young_score = redis_db.client.zscore("unacked_index", young)
    worker = start_worker(f"legacy-{unique}", env, logs, queues=[queue], concurrency=1)
    try:
        wait_for(lambda: redis_db.client.llen(key) >= 1, timeout=60, what="the stale message to run")
        time.sleep(8)  # a further heartbeat tick: nothing else comes back
        runs = [raw.decode() for raw in redis_db.client.lrange(key, 0, -1)]
        print(f"\n[mixed legacy] runs={runs} stale={stale_id} young_held={young_id}")
        assert runs == [stale_id]
        assert redis_db.client.zscore("unacked_index", stale) is None
        assert redis_db.client.zscore("unacked_index", young) == young_score
        assert "restoring 1 message(s) held more than 3600 s" in worker.log()
        _our_worker_runs_a_task(redis_db, client, queue, f"{key}-after")
    finally:
        worker.stop()
