"""A plain Celery 5.7 app with none of our classes, as a team that adopts us next to its
existing workers runs it: ``celery -A tests.support.stock_app worker``.

It reads its broker and result backend from ``STOCK_REDIS_URL`` (the test's Redis
database); its task records every run in a Redis list so tests can count runs.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import redis
from celery import Celery

_URL = os.environ.get("STOCK_REDIS_URL", "redis://127.0.0.1:6379/15")

app = Celery("stock", broker=_URL, backend=_URL)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, accept_content=["json"])

_clients: dict[int, redis.Redis] = {}


def _redis() -> redis.Redis:
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(_URL)
    return _clients[pid]


@app.task(name="stock.record", bind=True)
def record(self: Any, key: str, value: Any = None) -> Any:
    """Append ``{"id", "value", "t", "host"}`` of this run to the list ``key``."""
    run = {"id": self.request.id, "value": value, "t": time.time(), "host": socket.gethostname()}
    _redis().rpush(key, json.dumps({**run, "hostname": self.request.hostname}))
    return value
