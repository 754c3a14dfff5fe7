"""The API under concurrent load, and Flower (a real client of the same broker) seeing
our workers and a task submitted through the API."""

from __future__ import annotations

import asyncio
import sys

import httpx
import pytest

from tests.conftest import API_TOKEN, Api, Stack
from tests.support.procs import ManagedProcess, wait_for
from tests.support.services import free_port

pytestmark = pytest.mark.integration


def test_200_concurrent_submissions_all_succeed_with_the_right_result(api: Api) -> None:
    async def submit_all() -> list[tuple[int, str]]:
        limits = httpx.Limits(max_connections=200)
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with httpx.AsyncClient(
            base_url=api.base_url, headers=headers, limits=limits, timeout=60
        ) as http:
            responses = await asyncio.gather(
                *(
                    http.post("/api/v1/tasks", json={"task": "math.number_sum", "args": [i, 2 * i]})
                    for i in range(200)
                )
            )
        assert [r.status_code for r in responses] == [202] * 200
        return [(i, r.json()["task_id"]) for i, r in enumerate(responses)]

    submitted = asyncio.run(submit_all())
    ids = [task_id for _, task_id in submitted]
    assert len(set(ids)) == 200

    def all_done() -> bool:
        statuses = api.http.post("/api/v1/tasks/status", json={"task_ids": ids}).json()["statuses"]
        return all(s == "SUCCESS" for s in statuses.values())

    wait_for(all_done, timeout=120, interval=0.5, what="200 tasks to succeed")
    for i, task_id in submitted:
        assert api.http.get(f"/api/v1/tasks/{task_id}").json()["result"] == 3 * i


def test_flower_lists_our_workers_and_sees_an_api_task(api: Api, stack: Stack, session_tmp) -> None:
    port = free_port()
    env = {**stack.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "internal.infra.celery.celery_app",
        "flower",
        "--address=127.0.0.1",
        f"--port={port}",
    ]
    flower = ManagedProcess("flower", argv, env, session_tmp / "flower").start()
    base = f"http://127.0.0.1:{port}"
    try:

        def workers() -> dict | None:
            try:
                body = httpx.get(f"{base}/api/workers", params={"refresh": "1"}, timeout=10).json()
            except (httpx.HTTPError, ValueError):
                assert flower.alive(), flower.log()[-3000:]
                return None
            return body if any(name.startswith("stack-worker@") for name in body) else None

        wait_for(workers, timeout=60, interval=1, what="Flower to list the stack worker")
        task_id = api.http.post("/api/v1/tasks", json={"task": "math.number_sum", "args": [20, 22]}).json()[
            "task_id"
        ]

        def seen() -> dict | None:
            response = httpx.get(f"{base}/api/task/info/{task_id}", timeout=10)
            if response.status_code != 200:
                return None
            info = response.json()
            return info if info.get("state") == "SUCCESS" else None

        info = wait_for(seen, timeout=60, interval=0.5, what="Flower to see the task succeed")
        assert info["name"] == "math.number_sum" and info["result"] == "42"
        assert info["worker"].startswith("stack-worker@")
    finally:
        flower.stop()
