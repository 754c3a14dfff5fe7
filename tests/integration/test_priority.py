"""One 0 (lowest) .. 9 (highest) priority scale, proven on a real worker."""

from __future__ import annotations

import json
import time

import pytest

from internal.infra.celery import celery_client as client
from tests.conftest import Stack
from tests.support.procs import ManagedProcess, service_env, start_worker, wait_for

pytestmark = pytest.mark.integration


def test_priority_9_overtakes_50_priority_0_tasks(stack: Stack, session_tmp, unique: str) -> None:
    queue, key = f"prio-{unique}", f"prio-order-{unique}"
    env = service_env(stack.db, database_url=stack.database_url)
    worker: ManagedProcess = start_worker(
        f"prio-{unique}",
        env,
        session_tmp / "priority",
        queues=[queue],
        concurrency=1,
    )
    try:
        # The worker is already consuming: each task takes 50 ms, so a backlog builds up.
        for i in range(50):
            client.submit("tests.record", (key, f"low-{i}", 0.05), queue=queue, priority=0)
        client.submit("tests.record", (key, "high", 0.05), queue=queue, priority=9)
        wait_for(lambda: stack.db.client.llen(key) == 51, timeout=60, what="all 51 tasks to run")
        order = [json.loads(raw)["value"] for raw in stack.db.client.lrange(key, 0, -1)]
        position = order.index("high")
        print(f"priority-9 task ran at position {position} of 51")
        assert position <= 5, order[:10]
    finally:
        worker.stop()


def test_unprioritised_tasks_rank_as_priority_0(stack: Stack, session_tmp, unique: str) -> None:
    queue, key = f"prio-default-{unique}", f"prio-default-order-{unique}"
    for i in range(20):
        client.submit("tests.record", (key, f"none-{i}"), queue=queue)
    client.submit("tests.record", (key, "five"), queue=queue, priority=5)
    time.sleep(0.2)
    env = service_env(stack.db, database_url=stack.database_url)
    worker = start_worker(
        f"prio-default-{unique}", env, session_tmp / "priority", queues=[queue], concurrency=1
    )
    try:
        wait_for(lambda: stack.db.client.llen(key) == 21, timeout=60, what="all tasks to run")
        order = [json.loads(raw)["value"] for raw in stack.db.client.lrange(key, 0, -1)]
        assert order[0] == "five", order[:5]
    finally:
        worker.stop()
