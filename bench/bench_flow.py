"""What flow control costs when its limits are never reached.

- Worker drain (``celery worker``, prefork, 2 processes, project defaults) of no-op
  tasks under a global rate limit they never reach, and under a rate plus a concurrency
  limit, vs the same no-op without limits (target >= 0.9x each).
- Submitting with a ``flow_key`` vs a plain submit (context: a flow key is a message
  header, so each message is built by Celery's code instead of a cached template).

Tasks are queued first, then the worker starts; rates as in ``bench_worker``.
Run: ``.venv/bin/python -m bench.bench_flow``
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import redis

from bench._harness import Report, bench_env, private_redis
from bench.bench_submit import make_client
from bench.bench_worker import celery_worker, drain_rate
from pkg.celery_task import CeleryClient, TaskRequest

N = 10_000
#: Alternating rounds of the three drains (this machine's noise is about ±10 % per drain).
ROUNDS = 3
SUBMITS = 3_000


def _submit_rate(client: CeleryClient, **options: str) -> float:
    began = time.perf_counter()
    for n in range(SUBMITS):
        extra = {k: f"{v}-{n % 50}" for k, v in options.items()}
        client.submit("bench.noop", **extra)
    return SUBMITS / (time.perf_counter() - began)


def main() -> int:
    report = Report("bench_flow", "python -m bench.bench_flow")
    with private_redis() as server, bench_env(server) as env, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        db = redis.Redis.from_url(server.url)
        client = make_client(server.url)
        client.load_tasks()
        rates: dict[str, float] = {}
        for _ in range(ROUNDS):  # alternating rounds; the best of each counts
            for task in ("bench.noop", "bench.noop_rated", "bench.noop_slotted"):
                db.flushdb()
                client.submit_many([TaskRequest(task) for _ in range(N)], chunk_size=5000)
                rate = drain_rate(
                    db, lambda: celery_worker("internal.infra.celery.celery_app", env, tmp, "flow"), N
                )
                print(f"  {task}: {rate:.0f} tasks/s", flush=True)
                rates[task] = max(rate, rates.get(task, 0.0))
        report.add(
            "worker drain: global rate limit never reached / no limit",
            rates["bench.noop_rated"] / rates["bench.noop"],
            at_least=0.9,
            limited_per_s=round(rates["bench.noop_rated"]),
            unlimited_per_s=round(rates["bench.noop"]),
        )
        report.add(
            "worker drain: rate + concurrency limit never reached / no limit",
            rates["bench.noop_slotted"] / rates["bench.noop"],
            at_least=0.9,
            limited_per_s=round(rates["bench.noop_slotted"]),
            unlimited_per_s=round(rates["bench.noop"]),
        )
        db.flushdb()
        plain = max(_submit_rate(client) for _ in range(2))
        keyed = max(_submit_rate(client, flow_key="tenant") for _ in range(2))
        report.add(
            "context: submit with flow_key / plain submit",
            keyed / plain,
            keyed_per_s=round(keyed),
            plain_per_s=round(plain),
        )
        client.close()
    print(f"wrote {report.save()}")
    return 0 if all(f.passed for f in report.figures) else 1


if __name__ == "__main__":
    sys.exit(main())
