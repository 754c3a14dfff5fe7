"""Tasks the benchmarks run on the project's worker (``CELERY_EXTRA_INCLUDE=bench.tasks``)."""

from __future__ import annotations

import os
import time

import redis
import redis.asyncio

from internal.infra.celery import celery_client

_clients: dict[int, redis.Redis] = {}
_async_clients: dict[int, redis.asyncio.Redis] = {}


def bench_redis() -> redis.Redis:
    """A client on the benchmark's Redis, one per process."""
    if os.getpid() not in _clients:
        _clients[os.getpid()] = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _clients[os.getpid()]


@celery_client.app.task(name="bench.noop", public=True)
def noop() -> None:
    """Count the run (the same INCR every framework's no-op does), nothing else."""
    bench_redis().incr("bench:done")


@celery_client.app.task(name="bench.aio_noop", public=True)
async def aio_noop() -> None:
    """The no-op as an ``async def`` body, counted with an awaited INCR (asyncio pool)."""
    if os.getpid() not in _async_clients:
        _async_clients[os.getpid()] = redis.asyncio.Redis.from_url(
            os.environ["BENCH_REDIS_URL"], max_connections=2000
        )
    await _async_clients[os.getpid()].incr("bench:done")


@celery_client.app.task(name="bench.stamp", public=True)
def stamp(key: str) -> None:
    """Record when this run started (beat lateness)."""
    bench_redis().rpush(key, repr(time.time()))


@celery_client.app.task(name="bench.noop_rated", public=True, global_rate_limit="100000/s")
def noop_rated() -> None:
    """The no-op under a global rate limit it never reaches (one permit script per start)."""
    bench_redis().incr("bench:done")


@celery_client.app.task(
    name="bench.noop_slotted", public=True, global_rate_limit="100000/s", concurrency_limit=100000
)
def noop_slotted() -> None:
    """The no-op under a rate and a concurrency limit it never reaches (a permit, then
    a slot lease released at the acknowledgement)."""
    bench_redis().incr("bench:done")
