"""The scheduled task records queue lengths through the worker's async DB session, on
SQLite (default) and on a real MariaDB."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from internal.config.setting import RedisSettings, load_settings
from internal.infra.celery import build_celery_client
from internal.tasks.apscheduler.tasks import LATEST_QUEUE_LENGTHS_KEY
from tests.support.procs import migrate, service_env, start_worker
from tests.support.services import RedisDb, require_mariadb

pytestmark = pytest.mark.integration

MARIADB_ROOT = "mysql+asyncmy://root@127.0.0.1:3306"


async def _execute(url: str, *statements: str) -> list[tuple]:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            rows: list[tuple] = []
            for statement in statements:
                result = await conn.execute(text(statement))
                if result.returns_rows:
                    rows = [tuple(r) for r in result.fetchall()]
            return rows
    finally:
        await engine.dispose()


@pytest.fixture()
def mariadb_url(unique: str) -> Iterator[str]:
    require_mariadb()
    name = f"tasksys_test_{unique}"
    asyncio.run(_execute(MARIADB_ROOT, f"CREATE DATABASE {name}"))
    try:
        yield f"{MARIADB_ROOT}/{name}?charset=utf8mb4"
    finally:
        asyncio.run(_execute(MARIADB_ROOT, f"DROP DATABASE IF EXISTS {name}"))


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_record_queue_lengths_writes_samples(
    backend: str, redis_db: RedisDb, session_tmp, unique: str, request: pytest.FixtureRequest
) -> None:
    url = (
        request.getfixturevalue("mariadb_url")
        if backend == "mariadb"
        else f"sqlite+aiosqlite:///{session_tmp}/samples-{unique}.db"
    )
    migrate(url)
    env = service_env(redis_db, database_url=url)
    settings = load_settings(env_file=None)
    settings.redis = RedisSettings(db=redis_db.number)
    client = build_celery_client(settings)
    client.submit("math.number_sum", (1, 1))  # one message waiting in `default`
    worker = start_worker(f"db-{unique}", env, session_tmp / "db", queues=["cron_queue"], concurrency=1)
    try:
        result = client.submit("internal.aps_tasks.record_queue_lengths")
        lengths = client.get_result(result.id, timeout=30)
    finally:
        worker.stop()
    assert lengths == {"cron_queue": 0, "default": 1, "video_queue": 0}
    rows = asyncio.run(_execute(url, "SELECT queue, length FROM queue_length_samples ORDER BY queue"))
    assert rows == [("cron_queue", 0), ("default", 1), ("video_queue", 0)]
    latest = redis_db.client.hgetall(LATEST_QUEUE_LENGTHS_KEY)
    assert latest[b"default"] == b"1" and b"sampled_at" in latest
