"""Redis restarts (durable, appendonly) while the API takes submissions and the worker
and beat run: 503s are fast, everything reconnects by itself, nothing accepted is lost."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx

from tests.reliability.conftest import Ledger, client_for
from tests.support.procs import ManagedProcess, service_env, start_beat, start_worker, wait_for
from tests.support.services import free_port, private_redis


def test_redis_restart_during_api_load(session_tmp: Path, unique: str) -> None:
    with private_redis(appendonly=True) as server:
        key, tick_key = f"restart-runs-{unique}", f"restart-ticks-{unique}"
        env = service_env(
            server.url,
            database_url=f"sqlite+aiosqlite:///{session_tmp}/restart.db",
            extra={"CELERY_VISIBILITY_TIMEOUT": "10"},
        )
        logs = session_tmp / "restart"
        worker = start_worker(f"restart-{unique}", env, logs, queues=["default"], concurrency=2)
        beat = start_beat(f"restart-beat-{unique}", env, logs)
        port = free_port()
        api = ManagedProcess(
            "restart-api",
            [sys.executable, "-m", "internal.api.server", "--host", "127.0.0.1", "--port", str(port)],
            env,
            logs,
        ).start()
        base = f"http://127.0.0.1:{port}"
        client = client_for(server.url)
        responses: list[tuple[float, int, float, str | None]] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=base, timeout=10) as http:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        r = http.post("/api/v1/tasks", json={"task": "tests.work", "args": [20, key]})
                        task_id = r.json().get("task_id") if r.status_code == 202 else None
                        responses.append((started, r.status_code, time.monotonic() - started, task_id))
                    except httpx.HTTPError:
                        responses.append((started, 0, time.monotonic() - started, None))
                    time.sleep(0.02)

        try:
            wait_for(lambda: _up(base), timeout=60, what="the API")
            client.add_periodic_task(
                "tests.record", "interval", 1, name=f"tick-{unique}", args=[tick_key, "t"]
            )
            loader = threading.Thread(target=load, daemon=True)
            loader.start()
            time.sleep(4)
            server.stop()
            down_at = time.monotonic()
            time.sleep(3)
            server.start()
            up_at, up_wall = time.monotonic(), time.time()
            time.sleep(8)
            stop.set()
            loader.join(15)
            ledger = Ledger("Redis restart under API load")
            ledger.accepted = [task_id for _, status, _, task_id in responses if status == 202 and task_id]
            wait_for(
                lambda: (
                    set(ledger.runs(client_for(server.url).app.backend.client, key)) >= set(ledger.accepted)
                ),
                timeout=120,
                interval=1,
                what="every accepted task to run",
            )
            wait_for(
                lambda: _ticks_after(client, tick_key, up_wall), timeout=60, what="beat to fire after restart"
            )
            runs = ledger.runs(client_for(server.url).app.backend.client, key)
            assert worker.alive() and beat.alive() and api.alive()
        finally:
            stop.set()
            api.stop()
            beat.stop()
            worker.stop()
        unavailable = [(t, elapsed) for t, status, elapsed, _ in responses if status == 503]
        other = [status for _, status, _, _ in responses if status not in (202, 503)]
        first_ok_after = min(
            (t for t, status, _, _ in responses if status == 202 and t > up_at), default=None
        )
        figures = ledger.report(
            runs,
            rejected_503=len(unavailable),
            max_503_ms=round(max((e for _, e in unavailable), default=0) * 1000),
            other_statuses=len(other),
            api_recovered_s=round(first_ok_after - up_at, 2) if first_ok_after else None,
            outage_s=round(up_at - down_at, 1),
        )
        assert figures["lost"] == 0
        assert unavailable and max(e for _, e in unavailable) < 2.0
        assert other == []


def _up(base: str) -> bool:
    try:
        return httpx.get(base + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _ticks_after(client, key: str, moment: float) -> bool:  # type: ignore[no-untyped-def]
    import json

    raw = client.app.backend.client.lrange(key, 0, -1)
    return any(json.loads(item)["t"] > moment + 1 for item in raw)
