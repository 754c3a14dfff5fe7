"""Cost of deduplicated submits, against plain ``submit`` on the same app in the same run.

1. fresh keys: ``submit(dedupe_key=<unique>)`` (one script that checks the key, pushes
   the message and takes the key) vs ``submit`` (one MULTI/EXEC), 10k calls each;
   throughput ratio (target >= 0.9)
2. the same for ``submit_async`` (context)
3. held key: ``submit(dedupe_key=<held>)``, which sends nothing, vs plain ``submit`` (context)

Run: ``.venv/bin/python -m bench.bench_dedupe``
"""

from __future__ import annotations

import asyncio
import statistics
import sys

import redis

from bench._harness import Report, elapsed, private_redis
from bench.bench_submit import make_client
from pkg.celery_task import CeleryClient

N = 10_000
ROUNDS = 10
TASK = "math.number_sum"


def queued(db: redis.Redis) -> int:
    return sum(int(db.llen(k)) for k in db.keys("default*"))


def fresh_keys(report: Report, client: CeleryClient, db: redis.Redis) -> None:
    for i in range(500):  # warm up connections, routes, templates, the script cache
        client.submit(TASK, [1, 2])
        client.submit(TASK, [1, 2], dedupe_key=f"warm:{i}")
    db.flushdb()
    ratios, plain_rates, dedupe_rates = [], [], []
    block = N // ROUNDS
    for n in range(ROUNDS):  # interleaved blocks, so drift hits both sides alike
        plain = elapsed(lambda: [client.submit(TASK, [1, 2]) for _ in range(block)])
        dedupe = elapsed(
            lambda n=n: [client.submit(TASK, [1, 2], dedupe_key=f"r{n}:{i}") for i in range(block)]
        )
        if queued(db) != 2 * block or not db.exists(f"tasksys:dedupe:r{n}:0"):
            raise AssertionError("a submit with a fresh dedupe_key did not send or did not take its key")
        ratios.append(plain / dedupe)
        plain_rates.append(block / plain)
        dedupe_rates.append(block / dedupe)
        db.flushdb()
    report.add(
        "fresh keys: throughput of submit(dedupe_key=...) / plain submit",
        statistics.median(ratios),
        at_least=0.9,
        submit_per_s=round(statistics.median(plain_rates)),
        dedupe_submit_per_s=round(statistics.median(dedupe_rates)),
        calls=N,
    )


def fresh_keys_async(report: Report, client: CeleryClient, db: redis.Redis) -> None:
    async def run() -> tuple[list[float], list[float], list[float]]:
        for i in range(500):
            await client.submit_async(TASK, [1, 2])
            await client.submit_async(TASK, [1, 2], dedupe_key=f"warm:{i}")
        db.flushdb()
        loop = asyncio.get_running_loop()
        ratios, plain_rates, dedupe_rates = [], [], []
        block = N // ROUNDS
        for n in range(ROUNDS):
            start = loop.time()
            for _ in range(block):
                await client.submit_async(TASK, [1, 2])
            plain = loop.time() - start
            start = loop.time()
            for i in range(block):
                await client.submit_async(TASK, [1, 2], dedupe_key=f"a{n}:{i}")
            dedupe = loop.time() - start
            if queued(db) != 2 * block:
                raise AssertionError("submit_async with fresh dedupe keys did not send every task")
            ratios.append(plain / dedupe)
            plain_rates.append(block / plain)
            dedupe_rates.append(block / dedupe)
            db.flushdb()
        return ratios, plain_rates, dedupe_rates

    ratios, plain_rates, dedupe_rates = asyncio.run(run())
    report.add(
        "fresh keys, async: throughput of submit_async(dedupe_key=...) / plain submit_async",
        statistics.median(ratios),
        submit_async_per_s=round(statistics.median(plain_rates)),
        dedupe_submit_async_per_s=round(statistics.median(dedupe_rates)),
        calls=N,
    )


def held_key(report: Report, client: CeleryClient, db: redis.Redis) -> None:
    owner = client.submit(TASK, [1, 2], dedupe_key="held")
    ratios, plain_rates, held_rates = [], [], []
    block = N // ROUNDS
    for _ in range(ROUNDS):
        before = queued(db)
        plain = elapsed(lambda: [client.submit(TASK, [1, 2]) for _ in range(block)])
        held = elapsed(lambda: [client.submit(TASK, [1, 2], dedupe_key="held") for _ in range(block)])
        if queued(db) != before + block or db.get("tasksys:dedupe:held") != owner.id.encode():
            raise AssertionError("a submit with a held dedupe_key sent a task")
        ratios.append(plain / held)
        plain_rates.append(block / plain)
        held_rates.append(block / held)
    report.add(
        "held key: throughput of a deduplicated submit (nothing sent) / plain submit",
        statistics.median(ratios),
        submit_per_s=round(statistics.median(plain_rates)),
        deduplicated_per_s=round(statistics.median(held_rates)),
        calls=N,
    )


def main() -> int:
    report = Report("bench_dedupe", "python -m bench.bench_dedupe")
    with private_redis() as server:
        client = make_client(server.url)
        client.load_tasks()
        db = redis.Redis.from_url(server.url)
        fresh_keys(report, client, db)
        fresh_keys_async(report, client, db)
        held_key(report, client, db)
        client.close()
    report.notes.append(
        "Same app, same private Redis, interleaved rounds; ratios are medians of the rounds. "
        "Fresh keys: every call takes a new key, so every call sends (the worst case: the "
        "script also writes the key and its reverse key)."
    )
    print(f"wrote {report.save()}")
    return 0 if all(f.passed for f in report.figures) else 1


if __name__ == "__main__":
    sys.exit(main())
