"""The API with its broker down: it starts, answers 503 fast, and /readyz says why."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Stack
from tests.support.procs import ManagedProcess, service_env, wait_for
from tests.support.services import PrivateRedis, free_port, private_redis

pytestmark = pytest.mark.integration


def start_api(redis_url: str, stack: Stack, log_dir: Path) -> tuple[ManagedProcess, str]:
    port = free_port()
    env = service_env(redis_url, database_url=stack.database_url)
    argv = [sys.executable, "-m", "internal.api.server", "--host", "127.0.0.1", "--port", str(port)]
    proc = ManagedProcess(f"api-{port}", argv, env, log_dir).start()
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(base + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            assert proc.alive(), proc.log()[-3000:]
            return False

    wait_for(up, timeout=60, what="the API to start")
    return proc, base


@pytest.fixture()
def redis_server() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


def test_api_starts_with_the_broker_down_and_readyz_reports_it(stack: Stack, session_tmp: Path) -> None:
    proc, base = start_api(f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0", stack, session_tmp / "outage")
    try:
        started = time.monotonic()
        ready = httpx.get(base + "/readyz", timeout=10)
        assert time.monotonic() - started < 3
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "unavailable"
        assert {k for k, v in body["checks"].items() if not v["ok"]} == {"broker", "result_backend", "redis"}
        assert body["checks"]["database"]["ok"] is True
        assert "s3cret-pw" not in ready.text and "s3cret-pw" not in proc.log()
    finally:
        proc.stop()


def test_broker_going_down_gives_fast_503_and_recovers(
    stack: Stack, session_tmp: Path, redis_server: PrivateRedis
) -> None:
    proc, base = start_api(redis_server.url, stack, session_tmp / "outage")
    http = httpx.Client(base_url=base, timeout=10)
    try:
        assert http.post("/api/v1/tasks", json={"task": "math.number_sum", "args": [1, 2]}).status_code == 202
        assert http.get("/readyz").status_code == 200
        redis_server.kill()
        for method, path, body in (
            ("POST", "/api/v1/tasks", {"task": "math.number_sum", "args": [1, 2]}),
            ("GET", "/api/v1/tasks/some-id", None),
            ("POST", "/api/v1/tasks/status", {"task_ids": ["a"]}),
            ("GET", "/api/v1/queues", None),
            ("GET", "/api/v1/periodic-tasks", None),
            (
                "POST",
                "/api/v1/periodic-tasks",
                {
                    "name": "outage",
                    "task": "math.number_sum",
                    "schedule": {"type": "interval", "value": 5},
                    "args": [1, 2],
                },
            ),
            ("DELETE", "/api/v1/periodic-tasks/outage", None),
            ("GET", "/api/v1/dead-letters", None),
        ):
            started = time.monotonic()
            response = http.request(method, path, json=body)
            elapsed = time.monotonic() - started
            print(f"{method} {path} with Redis down: {response.status_code} in {elapsed * 1000:.0f} ms")
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "broker_unavailable"
            assert "Traceback" not in response.text
            assert elapsed < 2.0
        assert http.get("/readyz").status_code == 503
        assert http.get("/healthz").status_code == 200

        redis_server.start()
        wait_for(lambda: http.get("/readyz").status_code == 200, timeout=30, what="readiness after restart")
        response = http.post("/api/v1/tasks", json={"task": "math.number_sum", "args": [1, 2]})
        assert response.status_code == 202
    finally:
        http.close()
        proc.stop()
