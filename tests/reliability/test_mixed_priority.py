"""Priorities next to stock Celery: by default stock workers see only four of our ten
steps; with ``priority_filing_steps`` = stock's four steps they see every message, in the
same bands, and our workers still consume what was filed before the switch."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from celery import Celery

from pkg.celery_task import CeleryClient
from pkg.celery_task.worker.transport import STOCK_PRIORITY_STEPS, redis_priority_queue_keys
from tests.reliability.conftest import client_for
from tests.support.procs import CELERY_APP, ManagedProcess, service_env, wait_for, worker_argv
from tests.support.services import RedisDb

#: ``celery -A`` target of our worker in compatibility mode (see ``__getattr__``).
COMPAT_APP = f"{__name__}:compat_app"


def __getattr__(name: str) -> Any:
    """``compat_app``: the production app with ``priority_filing_steps`` set, built only
    when a worker started with ``-A tests.reliability.test_mixed_priority:compat_app``
    asks for it (the settings come from that process's environment)."""
    if name != "compat_app":
        raise AttributeError(name)
    from internal.infra.celery import celery_app

    _use_stock_steps(celery_app)
    return celery_app


def _use_stock_steps(app: Celery) -> None:
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "priority_filing_steps": STOCK_PRIORITY_STEPS,
    }


def _env(db: RedisDb, tmp: Path) -> dict[str, str]:
    return service_env(
        db, database_url=f"sqlite+aiosqlite:///{tmp}/mixed-priority.db", extra={"STOCK_REDIS_URL": db.url}
    )


def _compat_client(url: str) -> CeleryClient:
    client = client_for(url)
    _use_stock_steps(client.app)
    return client


def _start(name: str, argv: list[str], env: dict[str, str], logs: Path) -> ManagedProcess:
    proc = ManagedProcess(name, argv, env, logs).start()
    proc.wait_for_log(r"\bready\.", timeout=60)
    return proc


def _stock_worker(name: str, queue: str, env: dict[str, str], logs: Path) -> ManagedProcess:
    argv = [sys.executable, "-m", "celery", "-A", "tests.support.stock_app", "worker", "-l", "info"]
    argv += ["-Q", queue, "-c", "1", "-n", f"{name}@%h", "--without-mingle", "--without-gossip"]
    return _start(name, argv, env, logs)


def _values(db: RedisDb, key: str) -> list[Any]:
    return [json.loads(raw)["value"] for raw in db.client.lrange(key, 0, -1)]


def test_stock_workers_see_all_our_priorities_only_in_compatibility_mode(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    default_q, compat_q = f"prio-default-{unique}", f"prio-compat-{unique}"
    default_key, compat_key = f"{default_q}-runs", f"{compat_q}-runs"
    env, logs = _env(redis_db, session_tmp), session_tmp / "mixed-priority"
    ours, compat = client_for(redis_db.url), _compat_client(redis_db.url)
    for priority in range(10):  # our meaning: 9 highest
        ours.app.send_task("stock.record", [default_key, priority], queue=default_q, priority=priority)
        compat.app.send_task("stock.record", [compat_key, priority], queue=compat_q, priority=priority)
    compat_worker = _stock_worker(f"stock-compat-{unique}", compat_q, env, logs)
    default_worker = None
    try:
        wait_for(lambda: redis_db.client.llen(compat_key) >= 10, timeout=60, what="ten stock runs")
        default_worker = _stock_worker(f"stock-default-{unique}", default_q, env, logs)
        wait_for(lambda: redis_db.client.llen(default_key) >= 4, timeout=60, what="four stock runs")
        time.sleep(5)  # the stock worker has polled everything it ever will
        stranded = {
            k.rsplit("\x06\x16", 1)[-1]: redis_db.client.llen(k) for k in redis_priority_queue_keys(default_q)
        }
        print(
            f"\n[mixed priority] compat mode, stock worker ran {_values(redis_db, compat_key)}; "
            f"default mode ran {_values(redis_db, default_key)}, "
            f"left {sorted(k for k, n in stranded.items() if n)}"
        )
        assert _values(redis_db, compat_key) == [7, 8, 9, 4, 5, 6, 1, 2, 3, 0]
        assert _values(redis_db, default_key) == [9, 6, 3, 0]
        assert sorted(k for k, n in stranded.items() if n) == ["1", "2", "4", "5", "7", "8"]
    finally:
        if default_worker is not None:
            default_worker.stop()
        compat_worker.stop()


def test_our_compat_worker_orders_ours_and_stock_messages_on_one_scale(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    queue, key = f"prio-ours-{unique}", f"prio-ours-runs-{unique}"
    env, logs = _env(redis_db, session_tmp), session_tmp / "mixed-priority"
    ours, compat = client_for(redis_db.url), _compat_client(redis_db.url)
    stock = Celery("stock-producer", broker=redis_db.url, backend=redis_db.url)
    try:
        sent = {
            "ours 5, filed before the switch": ours.submit(
                "tests.work", [1, key], queue=queue, priority=5
            ).id,
            "ours 0": compat.submit("tests.work", [1, key], queue=queue, priority=0).id,
            "stock 9 (its lowest)": stock.send_task("tests.work", [1, key], queue=queue, priority=9).id,
            "stock unprioritised": stock.send_task("tests.work", [1, key], queue=queue).id,
            "ours 9": compat.submit("tests.work", [1, key], queue=queue, priority=9).id,
        }
    finally:
        stock.close()
    argv = worker_argv(queues=[queue], hostname=f"prio-ours-{unique}@%h", concurrency=1)
    argv[argv.index(CELERY_APP)] = COMPAT_APP
    worker = _start(f"prio-ours-{unique}", argv, env, logs)
    try:
        wait_for(lambda: redis_db.client.llen(key) >= 5, timeout=60, what="five runs")
        by_id = {task_id: label for label, task_id in sent.items()}
        order = [by_id[raw.decode()] for raw in redis_db.client.lrange(key, 0, -1)]
        print(f"\n[mixed priority] our compat worker ran: {order}")
        assert order == [
            "stock unprioritised",
            "ours 9",
            "ours 5, filed before the switch",
            "ours 0",
            "stock 9 (its lowest)",
        ]
    finally:
        worker.stop()
