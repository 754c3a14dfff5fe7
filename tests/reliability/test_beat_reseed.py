"""Redis restarts empty (no persistence): beat notices within seconds, stores the static
entries again (loudly: the dynamic ones are lost), takes its lock again and fires."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from tests.reliability.conftest import client_for
from tests.support.hardening_tasks import INCLUDE, STATIC_TICK, read_runs
from tests.support.procs import service_env, start_beat, start_worker, wait_for
from tests.support.services import private_redis


def test_beat_reseeds_static_entries_after_redis_comes_back_empty(session_tmp: Path, unique: str) -> None:
    ticks = session_tmp / f"reseed-ticks-{unique}.txt"
    with private_redis() as server:
        env = service_env(
            server.url,
            database_url=f"sqlite+aiosqlite:///{session_tmp}/reseed.db",
            extra={"CELERY_EXTRA_INCLUDE": INCLUDE, "TASKSYS_TEST_STATIC_TICK_FILE": str(ticks)},
        )
        logs = session_tmp / f"reseed-{unique}"
        client = client_for(server.url)
        conf = client.app.redbeat_conf
        static_key = f"{conf.key_prefix}{STATIC_TICK}"
        worker = start_worker(f"reseed-{unique}", env, logs, queues=["default"], concurrency=1)
        beat = start_beat(f"reseed-beat-{unique}", env, logs)
        admin = redis.Redis.from_url(server.url)
        try:
            client.add_periodic_task(
                "tests.hardening.append_file", "interval", 60, name=f"dyn-{unique}", args=[str(ticks)]
            )
            wait_for(lambda: len(read_runs(ticks)) >= 2, timeout=30, what="the 1 s static entry to fire")
            server.stop()
            server.start()  # same port, no persistence: an empty Redis
            restarted = time.monotonic()
            assert not admin.exists(static_key), "Redis kept data across the restart"
            before = len(read_runs(ticks))
            wait_for(lambda: admin.exists(static_key), timeout=30, interval=0.2, what="static entries back")
            statics_back = time.monotonic() - restarted
            wait_for(
                lambda: len(read_runs(ticks)) >= before + 2, timeout=60, what="the static entry to fire again"
            )
            fired_again = time.monotonic() - restarted
            wait_for(lambda: admin.exists(conf.lock_key), timeout=30, what="beat to hold its lock again")
            names = {entry["name"] for entry in client.list_periodic_tasks()}
            assert {"task_heartbeat_30s", STATIC_TICK} <= names, names
            assert f"dyn-{unique}" not in names  # lost with the data, as the log says
            assert beat.alive() and worker.alive()
        finally:
            admin.close()
            beat_code = beat.stop()
            worker.stop()
        log = beat.log()
        print(
            f"\n[beat reseed] statics_back_s={statics_back:.1f} fired_again_s={fired_again:.1f} "
            f"lock_acquired={log.count('beat: Acquired lock')}"
        )
        assert "the schedule in Redis is gone" in log and "dynamic entries were lost" in log
        assert log.count("beat: Acquired lock") >= 2, "beat did not take its lock again"
        assert beat_code == 0
