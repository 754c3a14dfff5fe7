"""Cost of task history (issue 11) on the worker: no-op tasks drained per second by
``celery worker`` (prefork, 2 processes, the project's defaults) with
``HISTORY_ENABLED=true`` vs ``false``, in alternating rounds of the same run (target
>= 0.9x), and the CPU each task costs the worker's processes and redis-server (less
sensitive to other load on the machine than the rate). With history on, every task's
received, started and succeeded records must be on the stream afterwards (checked, and
counted in the figures).

The recorder is not running during the drain: the figure is the worker's own cost (the
records wait in the stream, as while the recorder is down). A second, context figure
drains with a recorder writing to the SQLite database at the same time, so both share
the machine's cores.

Run: ``.venv/bin/python -m bench.bench_history [--tasks N] [--rounds R]``
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

import psutil
import redis

from bench._harness import REPO_ROOT, ManagedProcess, Report, bench_env, private_redis, wait_for
from bench.bench_worker import SKIP, celery_worker, drain_rate, enqueue_ours

STREAM = "tasksys:history"
APP = "internal.infra.celery.celery_app"


def main(argv: list[str] | None = None) -> int:
    """Measure, print and save the figures; 1 if the target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="no-op tasks per drain")
    parser.add_argument("--rounds", type=int, default=3, help="alternating off/on rounds")
    args = parser.parse_args(argv)
    total = args.tasks
    report = Report("bench_history", "python -m bench.bench_history")
    with private_redis() as server, bench_env(server) as env, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        db = redis.Redis.from_url(server.url)
        rates: dict[str, list[float]] = {"off": [], "on": []}
        cpu_ms: dict[str, list[float]] = {"off": [], "on": []}
        records = 0
        assert server.process is not None
        redis_pid = server.process.pid

        def drain(label: str, history: bool) -> float:
            db.flushdb()
            enqueue_ours(server.url, total)
            run_env = {**env, "HISTORY_ENABLED": "true" if history else "false"}
            marks: list[tuple[int, float]] = []

            def sample(done: int, worker: ManagedProcess) -> None:
                if (not marks and done >= SKIP) or (len(marks) == 1 and done >= total):
                    marks.append((done, _cpu_s([worker.pid, redis_pid])))

            rate = drain_rate(db, lambda: celery_worker(APP, run_env, tmp, label), total, sample)
            (first, cpu_first), (last, cpu_last) = marks
            per_task = (cpu_last - cpu_first) / (last - first) * 1000
            cpu_ms["on" if history else "off"].append(per_task)
            print(f"  {label}: {rate:.0f} tasks/s, {per_task:.3f} ms CPU per task", flush=True)
            return rate

        for _ in range(args.rounds):
            rates["off"].append(drain("history-off", history=False))
            rates["on"].append(drain("history-on", history=True))
            records = _check_records(db, total)
        off_best, on_best = max(rates["off"]), max(rates["on"])
        cpu_off, cpu_on = statistics.median(cpu_ms["off"]), statistics.median(cpu_ms["on"])
        report.add(
            "worker throughput: history on / off (prefork, 2 processes, no recorder)",
            on_best / off_best,
            at_least=0.9,
            on_per_s=round(on_best),
            off_per_s=round(off_best),
            median_ratio=round(statistics.median(rates["on"]) / statistics.median(rates["off"]), 3),
            records_per_drain=records,
        )
        report.add(
            "CPU per task (worker tree + redis-server): history off / on",
            cpu_off / cpu_on,
            on_ms=round(cpu_on, 3),
            off_ms=round(cpu_off, 3),
        )
        with_recorder = _drain_with_recorder(db, server.url, env, tmp, total)
        report.add(
            "context: history on with the recorder running / off",
            with_recorder / off_best,
            on_with_recorder_per_s=round(with_recorder),
        )
        report.notes.append(
            f"{total} no-op tasks per drain, {args.rounds} alternating rounds, best of each; "
            "rate between the 200th and the last completion."
        )
    print(f"wrote {report.save()}")
    return 0 if all(f.passed for f in report.figures) else 1


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their children."""
    total = 0.0
    for pid in pids:
        parent = psutil.Process(pid)
        for proc in [parent, *parent.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


def _check_records(db: redis.Redis, total: int) -> int:
    """Wait for the main process's and the children's last flushes; the record count."""
    wanted = 3 * total  # received, started, succeeded per task
    wait_for(lambda: db.xlen(STREAM) >= wanted, timeout=30, what=f"{wanted} history records")
    return int(db.xlen(STREAM))


def _drain_with_recorder(db: redis.Redis, url: str, env: dict[str, str], tmp: Path, total: int) -> float:
    """History on, a recorder consuming the stream meanwhile; wait for its rows too."""
    db.flushdb()
    enqueue_ours(url, total)
    run_env = {**env, "HISTORY_ENABLED": "true"}
    recorder = ManagedProcess(
        "recorder", [sys.executable, str(REPO_ROOT / "scripts" / "run_history_recorder.py")], run_env, tmp
    ).start()
    try:
        recorder.wait_for_log("history recorder .* reading", timeout=60)
        rate = drain_rate(db, lambda: celery_worker(APP, run_env, tmp, "history-rec"), total)
        print(f"  history-on + recorder: {rate:.0f} tasks/s", flush=True)
        wait_for(
            lambda: _pending(db) == 0 and db.xlen(STREAM) >= 3 * total,
            timeout=120,
            interval=0.5,
            what="the recorder to catch up",
        )
    finally:
        recorder.stop()
    return rate


def _pending(db: redis.Redis) -> int:
    """Entries not yet read or not yet acknowledged by the recorder's group."""
    groups = db.xinfo_groups(STREAM)
    if not groups:
        return -1
    group = groups[0]
    lag = group.get("lag")
    return int(group.get("pending", 0)) + (int(lag) if lag is not None else 0)


if __name__ == "__main__":
    sys.exit(main())
