"""Two beats: each due run fires once; killing the lock holder hands over within ~30 s."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.reliability.conftest import client_for
from tests.support.procs import ManagedProcess, service_env, start_beat, start_worker, wait_for
from tests.support.services import RedisDb


def fired(db: RedisDb, key: str) -> list[float]:
    return [json.loads(raw)["t"] for raw in db.client.lrange(key, 0, -1)]


def test_standby_beat_takes_over_without_double_runs(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    env = service_env(redis_db, database_url=f"sqlite+aiosqlite:///{session_tmp}/beats.db")
    logs = session_tmp / f"beats-{unique}"
    worker = start_worker(f"beats-{unique}", env, logs, queues=["default"], concurrency=2)
    first: ManagedProcess = start_beat("beat-a", env, logs)
    second = ManagedProcess("beat-b", first.argv, env, logs).start()
    second.wait_for_log(r"beat: Starting", timeout=60)
    client = client_for(redis_db.url)
    key = f"pair-{unique}"
    try:
        client.add_periodic_task("tests.record", "interval", 1, name="pair", args=[key, "tick"])
        wait_for(lambda: len(fired(redis_db, key)) >= 6, timeout=20, what="6 runs with two beats")
        assert "Acquired lock" not in second.log()
        first.kill()
        killed_at = time.time()
        second.wait_for_log(r"beat: Acquired lock", timeout=45)
        wait_for(lambda: fired(redis_db, key)[-1] > killed_at + 1, timeout=45, what="standby to fire")
        takeover = min(t for t in fired(redis_db, key) if t > killed_at) - killed_at
        time.sleep(3)
        times = fired(redis_db, key)
    finally:
        first.kill()
        second.stop()
        worker.stop()
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    doubled = sum(gap < 0.5 for gap in gaps)
    print(f"\n[beat failover] runs={len(times)}, fired_twice={doubled}, takeover_s={takeover:.1f}")
    assert doubled == 0, f"a run fired twice: gaps {gaps}"
    assert takeover < 35
