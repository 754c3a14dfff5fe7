"""The unacked heartbeat next to a second live worker: a task that runs three times
the visibility timeout is never restored to the other worker, which keeps consuming
the same queue meanwhile, so the task runs exactly once."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.reliability.conftest import client_for
from tests.support.procs import ManagedProcess, service_env, wait_for, worker_argv
from tests.support.services import RedisDb

VISIBILITY_TIMEOUT = 3
RUN_SECONDS = 3 * VISIBILITY_TIMEOUT
INDEX = "tasksys:unacked_index"


def _worker(name: str, queue: str, env: dict[str, str], logs: Path) -> ManagedProcess:
    argv = worker_argv(queues=[queue], hostname=f"{name}@%h", concurrency=1)
    argv[argv.index("-A") + 1] = "tests.support.short_visibility.app"
    return ManagedProcess(name, argv, env, logs).start()


def _events(db: RedisDb, key: str) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in db.client.lrange(key, 0, -1)]


def test_a_task_longer_than_the_visibility_timeout_runs_once_next_to_a_live_worker(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    queue, key, quick = f"beat-{unique}", f"long-{unique}", f"quick-{unique}"
    env = service_env(
        redis_db,
        database_url=f"sqlite+aiosqlite:///{session_tmp}/heartbeat.db",
        extra={"TASKSYS_TEST_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT)},
    )
    logs = session_tmp / "unacked-heartbeat"
    client = client_for(redis_db.url)
    workers = [_worker(f"hb-{n}-{unique}", queue, env, logs) for n in ("a", "b")]
    try:
        for worker in workers:
            worker.wait_for_log(r"\bready\.", timeout=60)
        task_id = client.submit("tests.sleep", [RUN_SECONDS, key], queue=queue).id
        wait_for(lambda: _events(redis_db, key), timeout=15, what="the long task to start")
        started_at = time.time()
        # The other worker is live: it takes and runs these while the long task runs.
        quick_ids = [client.submit("tests.work", [0, quick], queue=queue).id for _ in range(3)]
        wait_for(lambda: redis_db.client.llen(quick) >= 3, timeout=RUN_SECONDS, what="the other worker")
        assert len(_events(redis_db, key)) == 1, "the long task was still running, alone"
        # Past twice the visibility timeout its unacked entry is fresh: it was refreshed.
        time.sleep(max(0.0, started_at + 2 * VISIBILITY_TIMEOUT - time.time()))
        held = redis_db.client.zrange(INDEX, 0, -1, withscores=True)
        assert len(held) == 1 and time.time() - held[0][1] < VISIBILITY_TIMEOUT, held
        wait_for(
            lambda: len(_events(redis_db, key)) >= 2, timeout=RUN_SECONDS + 10, what="the task to finish"
        )
        time.sleep(1)  # a duplicate would have started well before the first run finished
        events = _events(redis_db, key)
        hosts = [worker.name for worker in workers if task_id in worker.log()]
        print(
            f"\n[unacked heartbeat] visibility_timeout_s={VISIBILITY_TIMEOUT} run_s={RUN_SECONDS} "
            f"events={[e['value'] for e in events]} workers_logging_it={hosts} quick_runs={len(quick_ids)}"
        )
        assert [e["value"] for e in events] == ["started", "finished"], "ran exactly once"
        assert len(hosts) == 1, "only one worker ever received it"
        assert sorted(raw.decode() for raw in redis_db.client.lrange(quick, 0, -1)) == sorted(quick_ids)
        wait_for(lambda: redis_db.client.zcard(INDEX) == 0, timeout=5, what="the unacked index to empty")
    finally:
        for worker in workers:
            worker.stop()
