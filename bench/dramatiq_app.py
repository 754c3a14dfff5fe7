"""Dramatiq on the same Redis and the same no-op, for context (``dramatiq bench.dramatiq_app``)."""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)
_client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])


@dramatiq.actor(max_retries=0)
def noop() -> None:
    """One INCR, as every framework's no-op."""
    _client.incr("bench:done")
