"""Workers killed, stopped and cut off from the broker while running tasks."""

from __future__ import annotations

import random
import signal
import sys
import time
from pathlib import Path

import redis

from pkg.celery_task import TaskRequest
from pkg.celery_task.worker.transport import redis_priority_queue_keys
from tests.reliability.conftest import Ledger, client_for
from tests.support.procs import REPO_ROOT, ManagedProcess, service_env, start_worker, wait_for
from tests.support.services import RedisDb, private_redis

#: Recovery is bounded by the visibility timeout; a short one keeps these tests short.
FAST_RECOVERY = {"CELERY_VISIBILITY_TIMEOUT": "10"}


def _env(db: RedisDb | str, tmp: Path, **extra: str) -> dict[str, str]:
    return service_env(
        db, database_url=f"sqlite+aiosqlite:///{tmp}/reliability.db", extra={**FAST_RECOVERY, **extra}
    )


def test_sigkill_a_worker_mid_run_and_restart_it(redis_db: RedisDb, session_tmp: Path, unique: str) -> None:
    queue, key = f"kill-{unique}", f"kill-runs-{unique}"
    env, logs = _env(redis_db, session_tmp), session_tmp / "kill"
    client = client_for(redis_db.url)
    first = start_worker(f"kill-a-{unique}", env, logs, queues=[queue], concurrency=2)
    second = start_worker(f"kill-b-{unique}", env, logs, queues=[queue], concurrency=2)
    ledger = Ledger("worker SIGKILL")
    rng = random.Random(7)
    ledger.accepted = client.submit_many(
        [TaskRequest("tests.work", [rng.randint(50, 200), key], queue=queue) for _ in range(500)]
    )
    try:
        wait_for(lambda: redis_db.client.llen(key) >= 150, timeout=60, what="150 runs")
        first.kill()
        killed_at = time.monotonic()
        first = start_worker(f"kill-a-{unique}", env, logs, queues=[queue], concurrency=2)
        wait_for(
            lambda: set(ledger.runs(redis_db.client, key)) >= set(ledger.accepted),
            timeout=180,
            interval=0.5,
            what="every accepted task to run",
        )
        recovered = time.monotonic() - killed_at
    finally:
        first.stop()
        second.stop()
    figures = ledger.report(ledger.runs(redis_db.client, key), recovery_s=round(recovered, 1))
    assert figures["lost"] == 0
    assert figures["duplicated"] <= 4  # at most what the killed worker was running


#: A process that takes a message and the unacked-restore lock, then dies by SIGKILL:
#: a worker killed in the middle of a restore, with a message of its own held.
_DIE_IN_RESTORE = """
import os, signal, sys
from tests.reliability.conftest import client_for
client = client_for(sys.argv[1])
with client.app.connection_for_read() as conn:
    channel = conn.default_channel
    assert channel.basic_get(sys.argv[2], no_ack=False) is not None
    qos = channel.qos
    with channel.conn_or_acquire() as redis_client:
        lock = redis_client.lock(qos.unacked_mutex_key, timeout=qos.unacked_mutex_expire)
        assert lock.acquire(blocking=False)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _die_holding_then_restore(script: str, name: str, db: RedisDb, tmp: Path, unique: str) -> float:
    """Submit one task, let ``script`` take its message and die by SIGKILL, then start a
    worker; seconds from the worker's start until the task ran, once."""
    queue, key = f"{name}-{unique}", f"{name}-runs-{unique}"
    env, logs = _env(db, tmp), tmp / name
    task_id = client_for(db.url).submit("tests.work", [10, key], queue=queue).id
    argv = [sys.executable, "-c", script, db.url, queue]
    assert ManagedProcess(f"die-{name}", argv, env, logs).start().wait(timeout=60) == -signal.SIGKILL
    assert sum(db.client.llen(k) for k in redis_priority_queue_keys(queue)) == 0, "taken from the queue"
    assert db.client.hlen("tasksys:unacked") == 1, "and held as unacked"
    started = time.monotonic()
    worker = start_worker(f"{name}-{unique}", env, logs, queues=[queue], concurrency=1)
    try:
        ran = [task_id.encode()]
        wait_for(lambda: db.client.lrange(key, 0, -1) == ran, timeout=90, what="the restored task")
    finally:
        assert worker.stop() == 0
    return time.monotonic() - started


def test_a_worker_killed_inside_a_restore_does_not_stop_restores(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    # kombu's default lock expiry (300 s) kept restores out for five minutes; the
    # visibility timeout (10 s) plus our lock expiry and a restore interval bound it now.
    took = _die_holding_then_restore(_DIE_IN_RESTORE, "mutex", redis_db, session_tmp, unique)
    print(f"\n[killed inside a restore] task ran {took:.1f} s after a worker started")


#: A consumer that dies by SIGKILL the moment a popped message reaches it, before any
#: of its own code (kombu's included) could record it: BRPOP lost such a message.
_DIE_AFTER_POP = """
import os, signal, sys
from kombu import Queue
from pkg.celery_task.worker.messages import SafeMessage
from pkg.celery_task.worker.transport import PriorityRedisChannel
from tests.reliability.conftest import client_for

class Dying(SafeMessage):
    def __init__(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

PriorityRedisChannel.Message = Dying
client = client_for(sys.argv[1])
with client.app.connection_for_read() as conn, conn.Consumer(Queue(sys.argv[2]), callbacks=[print]):
    conn.drain_events(timeout=30)
"""


def test_a_worker_killed_right_after_a_pop_loses_nothing(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    took = _die_holding_then_restore(_DIE_AFTER_POP, "pop", redis_db, session_tmp, unique)
    print(f"\n[killed right after a pop] task ran {took:.1f} s after a worker started")


def test_warm_shutdown_finishes_running_tasks_and_runs_shutdown_hooks(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    queue, key = f"warm-{unique}", f"warm-runs-{unique}"
    hooks = session_tmp / f"warm-hooks-{unique}"
    hooks.mkdir()
    env = service_env(
        redis_db,
        database_url=f"sqlite+aiosqlite:///{session_tmp}/warm.db",
        hook_dir=hooks,
        extra=FAST_RECOVERY,
    )
    client = client_for(redis_db.url)
    worker = start_worker(f"warm-{unique}", env, session_tmp / "warm", queues=[queue], concurrency=2)
    ledger = Ledger("warm shutdown")
    ledger.accepted = [client.submit("tests.work", [2000, key], queue=queue).id for _ in range(6)]
    wait_for(
        lambda: len(client.app.control.inspect(timeout=1).active() or {}) > 0,
        timeout=20,
        what="tasks running",
    )
    time.sleep(0.5)
    worker.send(signal.SIGTERM)
    assert worker.wait(60) == 0
    finished = ledger.runs(redis_db.client, key)
    assert len(finished) == 2  # the two running when asked to stop finished first
    started = {p.name.split("-")[1] for p in hooks.glob("started-*")}
    stopped = {p.name.split("-")[1] for p in hooks.glob("stopped-*")}
    assert started and started == stopped
    worker = start_worker(f"warm2-{unique}", env, session_tmp / "warm", queues=[queue], concurrency=2)
    try:
        wait_for(
            lambda: set(ledger.runs(redis_db.client, key)) >= set(ledger.accepted),
            timeout=60,
            what="the queued rest to run",
        )
    finally:
        worker.stop()
    figures = ledger.report(
        ledger.runs(redis_db.client, key), finished_before_exit=len(finished), shutdown_hooks=len(stopped)
    )
    assert figures["lost"] == 0 and figures["duplicated"] == 0


def test_soft_shutdown_timeout_returns_running_tasks_to_the_queue(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    queue, key = f"soft-{unique}", f"soft-runs-{unique}"
    env = _env(redis_db, session_tmp, CELERY_SOFT_SHUTDOWN_TIMEOUT="1")
    client = client_for(redis_db.url)
    launcher = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "run_celery_worker.py"),
        "--queues",
        queue,
        "--concurrency",
        "2",
        "-n",
        f"soft-{unique}@%h",
    ]
    worker = ManagedProcess(f"soft-{unique}", launcher, env, session_tmp / "soft").start()
    worker.wait_for_log(r"\bready\.", timeout=60)
    ledger = Ledger("soft shutdown")
    ledger.accepted = [client.submit("tests.work", [8000, key], queue=queue).id for _ in range(2)]
    wait_for(
        lambda: len(client.app.control.inspect(timeout=1).active() or {}) > 0,
        timeout=20,
        what="tasks running",
    )
    time.sleep(0.5)
    stopped_at = time.monotonic()
    worker.send(signal.SIGTERM)
    worker.wait(60)
    took = time.monotonic() - stopped_at
    assert took < 6, f"soft shutdown took {took:.1f} s"
    assert "soft shutdown" in worker.log().lower()
    worker = start_worker(f"soft2-{unique}", env, session_tmp / "soft", queues=[queue], concurrency=2)
    try:
        wait_for(
            lambda: set(ledger.runs(redis_db.client, key)) >= set(ledger.accepted),
            timeout=90,
            what="the interrupted tasks to run again",
        )
    finally:
        worker.stop()
    figures = ledger.report(ledger.runs(redis_db.client, key), shutdown_s=round(took, 1))
    assert figures["lost"] == 0


def test_connection_loss_cancels_long_tasks_so_none_runs_twice(session_tmp: Path, unique: str) -> None:
    with private_redis(appendonly=True) as server:
        queue, key = f"loss-{unique}", f"loss-runs-{unique}"
        env = _env(server.url, session_tmp)
        client = client_for(server.url)
        worker = start_worker(f"loss-{unique}", env, session_tmp / "loss", queues=[queue], concurrency=2)
        ledger = Ledger("broker connection lost")
        ledger.accepted = [client.submit("tests.work", [4000, key], queue=queue).id for _ in range(4)]
        try:
            wait_for(
                lambda: len(client.app.control.inspect(timeout=1).active() or {}) > 0,
                timeout=20,
                what="tasks running",
            )
            time.sleep(1)
            server.stop()  # durable (appendonly): the queue and the unacked index survive
            lost_at = time.monotonic()
            time.sleep(2)
            server.start()
            admin = redis.Redis.from_url(server.url)
            wait_for(
                lambda: set(ledger.runs(admin, key)) >= set(ledger.accepted),
                timeout=120,
                interval=0.5,
                what="all tasks to complete after the connection loss",
            )
            recovered = time.monotonic() - lost_at
            runs = ledger.runs(admin, key)
        finally:
            worker.stop()
        figures = ledger.report(runs, recovery_s=round(recovered, 1))
        assert figures["lost"] == 0 and figures["duplicated"] == 0
        assert "Connection to broker lost" in worker.log()
