"""A Celery app with Celery's own defaults: the baseline the project is compared to.

``celery -A bench.raw_celery worker``; broker and backend are ``BENCH_REDIS_URL``.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

app = Celery("raw", broker=os.environ["BENCH_REDIS_URL"], backend=os.environ["BENCH_REDIS_URL"])
_clients: dict[int, redis.Redis] = {}


def _redis() -> redis.Redis:
    if os.getpid() not in _clients:
        _clients[os.getpid()] = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _clients[os.getpid()]


@app.task(name="bench.noop")
def noop() -> None:
    """The same no-op as the project's (one INCR)."""
    _redis().incr("bench:done")


@app.task(name="math.number_sum")
def number_sum(x: float, y: float) -> float:
    """The same sum as the project's."""
    return x + y
