"""``create_app(settings, client)`` uses what it is given: two apps in one process, each
on its own Redis database and SQLite file, served in process through httpx's ASGI
transport with their real lifespans; and startup never blocks the event loop, even
when the broker takes seconds to answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from internal.config.setting import Settings, load_settings
from tests.support.services import HOST, RedisDb

pytestmark = pytest.mark.integration


def _settings(monkeypatch: pytest.MonkeyPatch, db: RedisDb, database: Path, **env: str) -> Settings:
    """Settings as this process's environment gives them, on ``db`` and ``database``."""
    with monkeypatch.context() as patch:
        patch.setenv("REDIS_DB", str(db.number))
        patch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{database}")
        for name, value in env.items():
            patch.setenv(name, value)
        return load_settings(env_file=None)


@contextlib.asynccontextmanager
async def _serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, and an HTTP client that talks to it in process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test", timeout=10) as http:
            yield http


def _queued_task_ids(db: RedisDb) -> set[str]:
    """Ids of the task messages waiting in any list of ``db``."""
    ids: set[str] = set()
    for key in db.client.scan_iter(count=1000):
        if db.client.type(key) != b"list":
            continue
        for raw in db.client.lrange(key, 0, -1):
            with contextlib.suppress(ValueError, TypeError):
                ids.add(json.loads(raw)["headers"]["id"])
    return ids


def test_two_apps_in_one_process_use_their_own_redis_and_database(
    monkeypatch: pytest.MonkeyPatch, redis_db: RedisDb, other_redis_db: RedisDb, tmp_path: Path, unique: str
) -> None:
    from internal.api.app import create_app
    from internal.infra.celery import build_celery_client
    from internal.services.operations import PROBE_KEY

    dbs = {"a": redis_db, "b": other_redis_db}
    files = {name: tmp_path / f"{name}.db" for name in dbs}
    settings = {name: _settings(monkeypatch, dbs[name], files[name]) for name in dbs}
    clients = {name: build_celery_client(settings[name]) for name in dbs}
    apps = {name: create_app(settings[name], clients[name]) for name in dbs}
    sent = {"a": [f"a-{unique}"], "b": [f"b1-{unique}", f"b2-{unique}"]}

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with _serving(apps["a"]) as http_a, _serving(apps["b"]) as http_b:
            https = {"a": http_a, "b": http_b}
            for name, http in https.items():
                for task_id in sent[name]:
                    body = {"task": "math.number_sum", "args": [1, 2], "task_id": task_id}
                    response = await http.post("/api/v1/tasks", json=body)
                    assert response.status_code == 202, response.text
            # Readiness writes its probe key through the app's own Redis client.
            ready_a = await http_a.get("/readyz")
            seen["probe after a"] = {
                name: bool(await asyncio.to_thread(db.client.exists, PROBE_KEY)) for name, db in dbs.items()
            }
            ready_b = await http_b.get("/readyz")
            for ready in (ready_a, ready_b):
                assert ready.status_code == 200, ready.text
            for name, http in https.items():
                seen[f"queues {name}"] = (await http.get("/api/v1/queues")).json()["queues"]
                seen[f"engine {name}"] = str(apps[name].state.db_engine.url.database)
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        for client in clients.values():
            client.close()

    assert _queued_task_ids(redis_db) == set(sent["a"])
    assert _queued_task_ids(other_redis_db) == set(sent["b"])
    assert seen["queues a"]["default"] == 1
    assert seen["queues b"]["default"] == 2
    assert seen["probe after a"] == {"a": True, "b": False}
    for name in dbs:
        assert seen[f"engine {name}"] == str(files[name])
        assert files[name].exists()


class _SlowRedis:
    """A TCP server that accepts every connection and closes it ``delay`` seconds later
    without a word, as a stalled broker would; runs in a thread of its own."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._server = socket.create_server((HOST, 0))
        self.port = int(self._server.getsockname()[1])
        self._open: list[tuple[threading.Timer, socket.socket]] = []
        self._thread = threading.Thread(target=self._accept, name="slow-redis", daemon=True)

    def __enter__(self) -> _SlowRedis:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()
        self._thread.join(5)
        for timer, conn in self._open:
            timer.cancel()
            conn.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed: the test is over
                return
            timer = threading.Timer(self.delay, conn.close)
            timer.start()
            self._open.append((timer, conn))


def test_startup_does_not_block_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, redis_db: RedisDb, tmp_path: Path
) -> None:
    """The Celery check runs against a broker that takes seconds to fail while a
    coroutine on the same loop keeps ticking; the app then starts and /readyz says the
    broker is down."""
    from internal.api.app import create_app
    from internal.infra.celery import build_celery_client

    with _SlowRedis(delay=1.0) as slow:
        slow_url = f"redis://{HOST}:{slow.port}/0"
        settings = _settings(
            monkeypatch,
            redis_db,
            tmp_path / "app.db",
            CELERY_BROKER_URL=slow_url,
            CELERY_RESULT_BACKEND=slow_url,
        )
        client = build_celery_client(settings)
        app = create_app(settings, client)

        async def scenario() -> tuple[float, float, int]:
            ticks: list[float] = []
            done = asyncio.Event()

            async def ticker() -> None:  # its last tick comes after startup, so no gap hides
                while True:
                    ticks.append(time.monotonic())
                    if done.is_set():
                        return
                    await asyncio.sleep(0.01)

            ticking = asyncio.create_task(ticker())
            await asyncio.sleep(0.05)
            started = time.monotonic()
            async with app.router.lifespan_context(app):
                startup = time.monotonic() - started
                done.set()
                await ticking
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://app.test", timeout=30
                ) as http:
                    ready = await http.get("/readyz")
            gaps = [later - earlier for earlier, later in zip(ticks, ticks[1:], strict=False)]
            body = ready.json()
            assert body["checks"]["broker"]["ok"] is False, body
            assert body["checks"]["redis"]["ok"] is True, body
            assert body["checks"]["database"]["ok"] is True, body
            return startup, max(gaps), ready.status_code

        try:
            startup, longest_gap, status = asyncio.run(scenario())
        finally:
            client.close()

    print(
        f"\nstartup {startup:.2f} s against a stalling broker; longest gap between ticks {longest_gap:.3f} s"
    )
    assert startup >= 0.9  # the check did wait for the stalling broker ...
    assert longest_gap < 0.25  # ... without holding the event loop
    assert status == 503
