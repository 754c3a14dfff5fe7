"""Redis with a password, and RabbitMQ as the broker."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from kombu import Connection

from pkg.celery_task import CeleryClient
from tests.reliability.conftest import client_for
from tests.support.procs import ManagedProcess, service_env, start_worker, wait_for, worker_argv
from tests.support.services import RedisDb, free_port, private_redis, require_rabbitmq

PASSWORD = "p@ss:w/rd#1%-" + uuid.uuid4().hex[:6]


def test_redis_with_a_password(session_tmp: Path, unique: str) -> None:
    with private_redis(password=PASSWORD) as server:
        env = service_env(
            "",
            database_url=f"sqlite+aiosqlite:///{session_tmp}/auth.db",
            extra={"REDIS_PORT": str(server.port), "REDIS_PASSWORD": PASSWORD},
        )
        env.pop("REDIS_URL")
        env["TASKSYS_TEST_REDIS_URL"] = server.url.replace(PASSWORD, _escaped())
        logs = session_tmp / f"auth-{unique}"
        worker = start_worker(f"auth-{unique}", env, logs, queues=["default"], concurrency=1)
        port = free_port()
        api = ManagedProcess(
            "auth-api",
            [sys.executable, "-m", "internal.api.server", "--host", "127.0.0.1", "--port", str(port)],
            env,
            logs,
        ).start()
        base = f"http://127.0.0.1:{port}"
        try:
            ready = wait_for(lambda: _ready(base), timeout=60, what="the API with a password")
            task_id = httpx.post(
                base + "/api/v1/tasks", json={"task": "math.number_sum", "args": [4, 5]}
            ).json()["task_id"]
            info = httpx.get(f"{base}/api/v1/tasks/{task_id}", params={"wait": 20}).json()
            assert info["result"] == 9
            health = json.dumps(ready) + httpx.get(base + "/api/v1/workers").text
        finally:
            api.stop()
            worker.stop()
        wrong_env = {**env, "REDIS_PASSWORD": "not-the-password"}
        wrong = ManagedProcess(
            f"auth-wrong-{unique}",
            worker_argv(queues=["default"], hostname=f"wrong-{unique}@%h"),
            wrong_env,
            logs,
        ).start()
        code = wrong.wait(60)
        wrong_api_port = free_port()
        wrong_api = ManagedProcess(
            "auth-wrong-api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(wrong_api_port),
            ],
            wrong_env,
            logs,
        ).start()
        try:
            wrong_ready = wait_for(
                lambda: _reachable(f"http://127.0.0.1:{wrong_api_port}/readyz"),
                timeout=60,
                what="the API with a wrong password",
            )
        finally:
            wrong_api.stop()
        print(
            f"\n[redis password] task result 9; wrong password: worker exit {code}, "
            f"readyz {wrong_ready.status_code}"
        )
        assert code == 78
        assert "refused the credentials" in wrong.log()
        assert wrong_ready.status_code == 503 and "Authentication" in wrong_ready.text
        everything = worker.log() + api.log() + wrong.log() + wrong_api.log() + health + wrong_ready.text
        assert (
            PASSWORD not in everything
            and _escaped() not in everything
            and "not-the-password" not in everything
        )


def _escaped() -> str:
    from urllib.parse import quote

    return quote(PASSWORD, safe="")


def _ready(base: str) -> dict | None:
    try:
        response = httpx.get(base + "/readyz", timeout=3)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _reachable(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None


RABBIT = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture()
def rabbit_env(redis_db: RedisDb, session_tmp: Path, unique: str):  # type: ignore[no-untyped-def]
    require_rabbitmq()
    queue = f"rmq-{unique}"
    env = service_env(
        redis_db,
        database_url=f"sqlite+aiosqlite:///{session_tmp}/rabbit.db",
        extra={"CELERY_BROKER_URL": RABBIT, "CELERY_DEFAULT_QUEUE": queue},
    )
    yield env, queue
    with Connection(RABBIT) as conn:  # queues outlive the test on a shared RabbitMQ: remove ours
        channel = conn.channel()
        for name in (queue, f"{queue}-prio"):
            try:
                channel.queue_delete(name)
            except Exception:  # noqa: S110 - a queue that was never declared
                channel = conn.channel()


def _rabbit_client(redis_db: RedisDb, queue: str) -> CeleryClient:
    client = client_for(redis_db.url)
    return CeleryClient(
        client.app_name,
        RABBIT,
        redis_db.url,
        include=client.include,
        task_routes=client.task_routes,
        task_default_queue=queue,
        timezone=client.timezone,
    )


def test_rabbitmq_broker_core_behaviour(
    rabbit_env, redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:  # type: ignore[no-untyped-def]
    env, queue = rabbit_env
    client = _rabbit_client(redis_db, queue)
    client.load_tasks()
    worker = start_worker(f"rmq-{unique}", env, session_tmp / "rabbit", queues=[queue], concurrency=2)
    try:
        assert client.get_result(client.submit("math.number_sum", (1, 2)).id, timeout=30) == 3
        delayed = client.submit("tests.record", (f"rmq-cd-{unique}", "x"), countdown=2)
        started = time.time()
        client.get_result(delayed.id, timeout=30)
        assert time.time() - started >= 1.5
        revoked = client.submit("tests.record", (f"rmq-rv-{unique}", "x"), countdown=3)
        client.revoke(revoked.id)
        chained = client.chain(
            client.signature("math.number_sum", (1, 2)), client.signature("math.number_sum", (3,))
        )
        assert client.get_result(chained.id, timeout=30) == 6
        grouped = client.group(*(client.signature("math.number_sum", (i, i)) for i in range(3)))
        assert grouped.get(timeout=30) == [0, 2, 4]
        chord = client.chord(
            [client.signature("math.number_sum", (i, 1)) for i in range(3)], client.signature("tests.total")
        )
        assert client.get_result(chord.id, timeout=30) == 6
        time.sleep(4)
        assert redis_db.client.llen(f"rmq-rv-{unique}") == 0 and client.get_status(revoked.id) == "REVOKED"
        assert client.queue_lengths([queue]) == {queue: 0}
    finally:
        worker.stop()
    print("\n[rabbitmq] submit, countdown, revoke, chain, group, chord: ok")


def test_rabbitmq_priorities_match_redis(
    rabbit_env, redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:  # type: ignore[no-untyped-def]
    env, queue = rabbit_env
    prio_queue, key = f"{queue}-prio", f"rmq-prio-{unique}"
    client = _rabbit_client(redis_db, queue)
    client.load_tasks()
    worker = start_worker(
        f"rmq-prio-{unique}", env, session_tmp / "rabbit", queues=[prio_queue], concurrency=1
    )
    try:
        for i in range(50):
            client.submit("tests.record", (key, f"low-{i}", 0.05), queue=prio_queue, priority=0)
        client.submit("tests.record", (key, "high", 0.05), queue=prio_queue, priority=9)
        wait_for(lambda: redis_db.client.llen(key) == 51, timeout=60, what="all 51 tasks")
    finally:
        worker.stop()
    order = [json.loads(raw)["value"] for raw in redis_db.client.lrange(key, 0, -1)]
    print(f"\n[rabbitmq] priority-9 task ran at position {order.index('high')} of 51")
    assert order.index("high") <= 5
