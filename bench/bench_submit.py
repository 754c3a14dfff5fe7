"""Producer-side costs, against Celery's ``send_task`` on the same app in the same run.

1. single submit: ``CeleryClient.submit`` vs ``app.send_task``, 10k calls (cost ratio <= 1.05)
2. bulk enqueue: ``submit_many`` vs a loop of ``send_task``, 10k tasks (>= 10x)
3. caller task ids: ``submit(task_id=...)`` (the id is claimed atomically, one more Redis
   call) vs ``app.send_task(task_id=...)``, which checks nothing (context)
4. status lookups: ``get_statuses`` of 1000 ids vs a loop of ``AsyncResult(id).state`` (>= 20x)

Run: ``.venv/bin/python -m bench.bench_submit``
"""

from __future__ import annotations

import statistics
import sys

import redis
from celery import states
from celery.result import AsyncResult

from bench._harness import Report, elapsed, private_redis
from pkg.celery_task import CeleryClient, TaskRequest

N = 10_000
ROUNDS = 5


def make_client(url: str) -> CeleryClient:
    """The production wiring (routes, static schedule, limits) on the benchmark's Redis."""
    from pydantic import SecretStr

    from internal.config.setting import CelerySettings, RedisSettings, load_settings
    from internal.infra.celery import build_celery_client

    settings = load_settings(env_file=None)
    settings.redis = RedisSettings(url=SecretStr(url))
    settings.celery = CelerySettings(extra_include="bench.tasks")
    return build_celery_client(settings)


def single_submit(report: Report, client: CeleryClient, db: redis.Redis) -> None:
    app = client.app
    for _ in range(500):  # warm up connections, routes, templates
        app.send_task("math.number_sum", [1, 2])
        client.submit("math.number_sum", [1, 2])
    ratios, raw_rates, ours_rates = [], [], []
    block = N // ROUNDS
    for _ in range(ROUNDS):  # interleaved blocks, so drift hits both sides alike
        raw = elapsed(lambda: [app.send_task("math.number_sum", [1, 2]) for _ in range(block)])
        ours = elapsed(lambda: [client.submit("math.number_sum", [1, 2]) for _ in range(block)])
        ratios.append(ours / raw)
        raw_rates.append(block / raw)
        ours_rates.append(block / ours)
        db.flushdb()
    report.add(
        "single submit: cost of CeleryClient.submit / app.send_task",
        statistics.median(ratios),
        at_most=1.05,
        send_task_per_s=round(statistics.median(raw_rates)),
        submit_per_s=round(statistics.median(ours_rates)),
        calls=N,
    )


def caller_ids(report: Report, client: CeleryClient, db: redis.Redis) -> None:
    app = client.app
    ratios, raw_rates, ours_rates = [], [], []
    block = N // ROUNDS
    for n in range(ROUNDS):
        raw = elapsed(
            lambda n=n: [app.send_task("math.number_sum", [1, 2], task_id=f"r{n}-{i}") for i in range(block)]
        )
        ours = elapsed(
            lambda n=n: [client.submit("math.number_sum", [1, 2], task_id=f"o{n}-{i}") for i in range(block)]
        )
        if not db.exists(f"tasksys:task_id:o{n}-0"):
            raise AssertionError("submit with a caller task id did not claim it")
        ratios.append(ours / raw)
        raw_rates.append(block / raw)
        ours_rates.append(block / ours)
        db.flushdb()
    report.add(
        "caller task ids: cost of submit(task_id=...) with its claim / app.send_task(task_id=...)",
        statistics.median(ratios),
        send_task_per_s=round(statistics.median(raw_rates)),
        submit_per_s=round(statistics.median(ours_rates)),
        calls=N,
    )


def bulk_enqueue(report: Report, client: CeleryClient, db: redis.Redis) -> None:
    app = client.app
    requests = [TaskRequest("math.number_sum", [i, i]) for i in range(N)]
    client.submit_many(requests[:500])
    db.flushdb()
    ratios, raw_rates, ours_rates = [], [], []
    for _ in range(3):
        raw = elapsed(lambda: [app.send_task("math.number_sum", [i, i]) for i in range(N)])
        db.flushdb()
        ours = elapsed(lambda: client.submit_many(requests))
        queued = sum(db.llen(k) for k in db.keys("default*"))
        if queued != N:
            raise AssertionError(f"submit_many left {queued} messages, expected {N}")
        db.flushdb()
        ratios.append(raw / ours)
        raw_rates.append(N / raw)
        ours_rates.append(N / ours)
    report.add(
        "bulk enqueue: submit_many speed-up over a send_task loop",
        statistics.median(ratios),
        at_least=10,
        send_task_per_s=round(statistics.median(raw_rates)),
        submit_many_per_s=round(statistics.median(ours_rates)),
        tasks=N,
    )


def status_lookups(report: Report, client: CeleryClient, db: redis.Redis) -> None:
    app = client.app
    ids = [f"status-{i}" for i in range(1000)]
    for task_id in ids:
        app.backend.store_result(task_id, 42, states.SUCCESS)
    client.get_statuses(ids)
    ratios, loop_times, bulk_times = [], [], []
    for _ in range(ROUNDS):
        loop = elapsed(lambda: [AsyncResult(task_id, app=app).state for task_id in ids])
        bulk = elapsed(lambda: client.get_statuses(ids))
        ratios.append(loop / bulk)
        loop_times.append(loop * 1000)
        bulk_times.append(bulk * 1000)
    statuses = client.get_statuses(ids)
    if set(statuses.values()) != {"SUCCESS"}:
        raise AssertionError("get_statuses did not read the stored states")
    report.add(
        "status lookups: get_statuses(1000) speed-up over AsyncResult(id).state loop",
        statistics.median(ratios),
        at_least=20,
        loop_ms=round(statistics.median(loop_times), 1),
        get_statuses_ms=round(statistics.median(bulk_times), 2),
    )


def main() -> int:
    report = Report("bench_submit", "python -m bench.bench_submit")
    with private_redis() as server:
        client = make_client(server.url)
        client.load_tasks()
        db = redis.Redis.from_url(server.url)
        single_submit(report, client, db)
        caller_ids(report, client, db)
        bulk_enqueue(report, client, db)
        status_lookups(report, client, db)
        client.close()
    report.notes.append(
        "Same app, same private Redis, interleaved rounds; ratios are medians of the rounds. "
        "The app has the project's defaults (task-sent events on), so both sides publish the same messages."
    )
    print(f"wrote {report.save()}")
    return 0 if all(f.passed for f in report.figures) else 1


if __name__ == "__main__":
    sys.exit(main())
