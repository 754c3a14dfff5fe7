"""Beat at scale: 10k dynamic entries.

7. - creating 10k entries: ``add_periodic_tasks`` (pipelined) vs ``add_periodic_task``
     one by one (speed-up, for context);
   - beat CPU with 10k entries vs 10 (<= 2x), over the same idle window;
   - lateness of 1-second entries, with the 10k entries loaded: the time a run starts
     on the worker minus its true due time (creation time + k seconds, not the
     previous run), p99 < 1 s.

Run: ``.venv/bin/python -m bench.bench_beat``
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
import redis

from bench._harness import ManagedProcess, Report, bench_env, elapsed, percentile, private_redis
from bench.bench_submit import make_client

ENTRIES = 10_000
SECOND_ENTRIES = 20
CPU_WINDOW = 15.0
LATENESS_WINDOW = 30.0


def daily(i: int, prefix: str) -> dict[str, object]:
    return {
        "task_name": "math.number_sum",
        "schedule_type": "cron",
        "schedule_value": f"{i % 60} 3 * * *",
        "name": f"{prefix}-{i}",
        "args": [i, i],
    }


def beat_cpu_seconds(env: dict[str, str], tmp: Path, window: float) -> float:
    beat = ManagedProcess(
        "beat",
        [sys.executable, "-m", "celery", "-A", "internal.infra.celery.celery_app", "beat", "-l", "warning"],
        env,
        tmp,
    ).start()
    try:
        time.sleep(5)  # start-up (loading the static entries) is not the steady state
        process = psutil.Process(beat.pid)
        before = sum(process.cpu_times()[:2])
        time.sleep(window)
        return sum(process.cpu_times()[:2]) - before
    finally:
        beat.stop()


def main() -> int:
    report = Report("bench_beat", "python -m bench.bench_beat")
    with private_redis() as server, bench_env(server) as env, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        db = redis.Redis.from_url(server.url)
        client = make_client(server.url)
        client.load_tasks()

        one_by_one = elapsed(lambda: [client.add_periodic_task(**daily(i, "single")) for i in range(ENTRIES)])
        db.flushdb()
        bulk = elapsed(lambda: client.add_periodic_tasks([daily(i, "bulk") for i in range(ENTRIES)]))
        report.add(
            "beat: creating 10k entries, add_periodic_tasks speed-up over one by one",
            one_by_one / bulk,
            one_by_one_s=round(one_by_one, 2),
            bulk_s=round(bulk, 2),
        )

        with_10k = beat_cpu_seconds(env, tmp, CPU_WINDOW)
        db.flushdb()  # beat stores the static entries again when it starts
        client.add_periodic_tasks([daily(i, "few") for i in range(7)])  # + 3 static entries = 10
        with_10 = beat_cpu_seconds(env, tmp, CPU_WINDOW)
        report.add(
            "beat: CPU with 10k entries / with 10",
            with_10k / max(with_10, 1e-3),
            at_most=2.0,
            cpu_10k_s=round(with_10k, 3),
            cpu_10_s=round(with_10, 3),
            window_s=CPU_WINDOW,
        )

        lateness = second_entries_lateness(client, db, env, tmp)
        report.add(
            "beat: lateness of 1 s entries, p99 (seconds, from the true due time)",
            percentile(lateness, 99),
            at_most=1.0,
            p50_s=round(percentile(lateness, 50), 3),
            max_s=round(max(lateness), 3),
            runs=len(lateness),
            entries_loaded=ENTRIES + SECOND_ENTRIES,
        )
        client.close()
    print(f"wrote {report.save()}")
    return 0 if all(f.passed for f in report.figures) else 1


def second_entries_lateness(client, db: redis.Redis, env: dict[str, str], tmp: Path) -> list[float]:  # type: ignore[no-untyped-def]
    db.flushdb()
    client.add_periodic_tasks([daily(i, "load") for i in range(ENTRIES)])
    worker = ManagedProcess(
        "worker",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "internal.infra.celery.celery_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "-l",
            "warning",
        ],
        env,
        tmp,
    ).start()
    beat = ManagedProcess(
        "beat",
        [sys.executable, "-m", "celery", "-A", "internal.infra.celery.celery_app", "beat", "-l", "warning"],
        env,
        tmp,
    ).start()
    try:
        time.sleep(5)
        names = [f"second-{i}" for i in range(SECOND_ENTRIES)]
        client.add_periodic_tasks(
            [
                {
                    "task_name": "bench.stamp",
                    "schedule_type": "interval",
                    "schedule_value": 1,
                    "name": name,
                    "args": [f"stamps:{name}"],
                }
                for name in names
            ]
        )
        created = {
            name: datetime.fromisoformat(client.get_periodic_task(name)["last_run_at"]).timestamp()
            for name in names
        }
        time.sleep(LATENESS_WINDOW)
        for name in names:
            client.disable_periodic_task(name)
        time.sleep(2)
    finally:
        beat.stop()
        worker.stop()
    lateness = []
    for name in names:
        starts = sorted(float(t) for t in db.lrange(f"stamps:{name}", 0, -1))
        lateness += [start - (created[name] + k) for k, start in enumerate(starts, start=1)]
    return lateness


if __name__ == "__main__":
    sys.exit(main())
