"""I/O-bound ``async def`` tasks for ``bench/bench_async.py``, on our worker
(``CELERY_EXTRA_INCLUDE=bench.tasks,bench.async_tasks``) and on Taskiq (same bodies)."""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import redis.asyncio
from taskiq_redis import ListQueueBroker

from internal.infra.celery import celery_client

_clients: dict[int, tuple[redis.asyncio.Redis, httpx.AsyncClient]] = {}


def _clients_here() -> tuple[redis.asyncio.Redis, httpx.AsyncClient]:
    """One async Redis and one httpx client per process (made on its first task's loop),
    each sized for every task of the process at once (redis-py's own pool stops at 100)."""
    if os.getpid() not in _clients:
        keepalive = int(os.environ.get("BENCH_HTTP_KEEPALIVE", "2000"))
        limits = httpx.Limits(max_connections=2000, max_keepalive_connections=keepalive)
        _clients[os.getpid()] = (
            redis.asyncio.Redis.from_url(os.environ["BENCH_REDIS_URL"], max_connections=2000),
            httpx.AsyncClient(limits=limits, timeout=30),
        )
    return _clients[os.getpid()]


async def _body(sent: float, ms: float, url: str | None) -> None:
    started = time.time()
    client, http = _clients_here()
    if url:
        (await http.get(url)).raise_for_status()
    else:
        await asyncio.sleep(ms / 1000)
    async with client.pipeline(transaction=False) as pipe:
        pipe.rpush("bench:latency", f"{started - sent:.6f}")
        pipe.incr("bench:done")
        await pipe.execute()


@celery_client.app.task(name="bench.aio_wait", public=True)
async def aio_wait(sent: float, ms: float = 50.0, url: str | None = None) -> None:
    """Await ``ms`` (or a GET of ``url``), then record start latency and count the run."""
    await _body(sent, ms, url)


broker = ListQueueBroker(url=os.environ["BENCH_REDIS_URL"], queue_name="bench_aio")


@broker.task(task_name="bench.aio_wait")
async def taskiq_wait(sent: float, ms: float = 50.0, url: str | None = None) -> None:
    """The same body on Taskiq."""
    await _body(sent, ms, url)
