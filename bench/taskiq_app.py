"""Taskiq on the same Redis and the same no-op, for context (``taskiq worker bench.taskiq_app:broker``)."""

from __future__ import annotations

import os

import redis.asyncio
from taskiq_redis import ListQueueBroker

broker = ListQueueBroker(url=os.environ["BENCH_REDIS_URL"])
_client = redis.asyncio.Redis.from_url(os.environ["BENCH_REDIS_URL"])


@broker.task(task_name="bench.noop")
async def noop() -> None:
    """One INCR, as every framework's no-op."""
    await _client.incr("bench:done")
