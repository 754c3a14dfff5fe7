"""Tasks with flow limits for the flow-control tests; workers load them with
``CELERY_EXTRA_INCLUDE=tests.support.tasks,tests.support.flow_tasks``. Each records its
start and end times (taken inside the task) under a key of the test's Redis database."""

from __future__ import annotations

import json
import os
import time

from internal.infra.celery import celery_client
from tests.support.tasks import test_redis

app = celery_client.app


def _run(key: str, seconds: float, flow_key: str | None = None) -> float:
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    record = {"start": start, "end": end, "pid": os.getpid(), "flow_key": flow_key}
    test_redis().rpush(key, json.dumps(record))
    return start


@app.task(name="flow.rated", public=True, global_rate_limit="10/s")
def rated(key: str, seconds: float = 0.0) -> float:
    """At most 10 starts per second across all workers."""
    return _run(key, seconds)


@app.task(name="flow.per_key_rated", public=True, rate_limit_per_key="5/s")
def per_key_rated(key: str, flow_key: str) -> float:
    """At most 5 starts per second for each flow key."""
    return _run(key, 0.0, flow_key)


@app.task(name="flow.limited", public=True, concurrency_limit=3)
def limited(key: str, seconds: float) -> float:
    """At most 3 running at once across all workers."""
    return _run(key, seconds)


@app.task(name="flow.one_per_key", public=True, concurrency_limit_per_key=1)
def one_per_key(key: str, seconds: float, flow_key: str) -> float:
    """At most one running at once for each flow key."""
    return _run(key, seconds, flow_key)


@app.task(name="flow.free", public=True)
def free(key: str, seconds: float = 0.0) -> float:
    """No limits declared (runtime limits may be set on it)."""
    return _run(key, seconds)
