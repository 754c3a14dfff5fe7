"""Task history through outages, with real processes: a worker runs 500 tasks while the
recorder is stopped for 20 s, then while the recorder cannot write to its MariaDB
database for 20 s (its user's privileges revoked and its connections killed); once it
is back, every row arrives with all three transitions, none twice."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from internal.models import TaskHistory, TaskTransition
from tests.reliability.conftest import client_for
from tests.support.procs import (
    migrate,
    service_env,
    start_history_recorder,
    start_worker,
    wait_for,
)
from tests.support.services import RedisDb, require_mariadb

pytestmark = pytest.mark.integration

TASKS = 500
OUTAGE_S = 20.0
MARIADB_ROOT = "mysql+asyncmy://root@127.0.0.1:3306"


def _run(url: str, *statements: str) -> list[tuple[Any, ...]]:
    async def go() -> list[tuple[Any, ...]]:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                rows: list[tuple[Any, ...]] = []
                for statement in statements:
                    result = await conn.execute(text(statement))
                    rows = [tuple(r) for r in result.fetchall()] if result.returns_rows else rows
                return rows
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _counts(url: str, ids: list[str]) -> tuple[int, int, int]:
    """(rows, rows with status SUCCESS, transitions) of these task ids."""

    async def go() -> tuple[int, int, int]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(TaskHistory.status, func.count())
                        .where(TaskHistory.task_id.in_(ids))
                        .group_by(TaskHistory.status)
                    )
                ).all()
                transitions = (
                    await conn.execute(
                        select(func.count())
                        .select_from(TaskTransition)
                        .where(TaskTransition.task_id.in_(ids))
                    )
                ).scalar_one()
        finally:
            await engine.dispose()
        by_status = {status: int(n) for status, n in rows}
        return sum(by_status.values()), by_status.get("SUCCESS", 0), int(transitions)

    return asyncio.run(go())


def _kill_connections_of(user: str) -> None:
    """End the user's open connections: new ones see its revoked privileges."""

    async def go() -> None:
        engine = create_async_engine(MARIADB_ROOT)
        try:
            async with engine.begin() as conn:
                query = text("SELECT id FROM information_schema.processlist WHERE user = :user")
                for (conn_id,) in (await conn.execute(query, {"user": user})).all():
                    with contextlib.suppress(DBAPIError):  # ended meanwhile
                        await conn.execute(text(f"KILL CONNECTION {int(conn_id)}"))
        finally:
            await engine.dispose()

    asyncio.run(go())


def _run_tasks(redis_url: str, queue: str) -> list[str]:
    """Submit TASKS sums and wait for every result; their ids."""
    client = client_for(redis_url)
    results = [client.submit("math.number_sum", (i, 1), queue=queue) for i in range(TASKS)]
    for result in results:
        result.get(timeout=120)
    client.close()
    return [r.id for r in results]


def _caught_up(url: str, ids: list[str], since: float, what: str) -> dict[str, float]:
    """Wait for every row (SUCCESS, three transitions each); the figures."""

    def done() -> tuple[int, int, int] | None:
        counts = _counts(url, ids)
        return counts if counts[1] == len(ids) and counts[2] >= 4 * len(ids) else None

    rows, succeeded, transitions = wait_for(done, 120, interval=0.5, what=what)
    figures = {
        "expected": len(ids),
        "rows": rows,
        "succeeded": succeeded,
        "transitions": transitions,
        "catch_up_s": round(time.monotonic() - since, 1),
    }
    print(f"\n[{what}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    return figures


@pytest.fixture()
def mariadb(unique: str) -> Iterator[tuple[str, str, str]]:
    """A database of its own and a user with all privileges on it only:
    (the user's URL, the database, the user)."""
    require_mariadb()
    name, user = f"tasksys_hist_{unique}", f"hist_{unique}"
    _run(
        MARIADB_ROOT,
        f"CREATE DATABASE {name}",
        f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-{unique}'",
        f"GRANT ALL PRIVILEGES ON {name}.* TO '{user}'@'%'",
    )
    try:
        yield f"mysql+asyncmy://{user}:pw-{unique}@127.0.0.1:3306/{name}?charset=utf8mb4", name, user
    finally:
        _run(MARIADB_ROOT, f"DROP USER IF EXISTS '{user}'@'%'", f"DROP DATABASE IF EXISTS {name}")


def test_recorder_stopped_20s_while_500_tasks_run_loses_no_row(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    queue, logs = f"outage-{unique}", session_tmp / "history-outage"
    url = f"sqlite+aiosqlite:///{session_tmp}/history-outage-{unique}.db"
    migrate(url)
    env = service_env(redis_db, database_url=url, extra={"HISTORY_ENABLED": "true"})
    worker = start_worker(f"outage-{unique}", env, logs, queues=[queue], concurrency=2)
    recorder = start_history_recorder(env, logs, f"rec-{unique}")
    try:
        assert recorder.stop() == 0
        stopped = time.monotonic()
        ids = _run_tasks(redis_db.url, queue)
        assert _counts(url, ids) == (0, 0, 0)  # nothing is written while it is down
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
        recorder.start()
        figures = _caught_up(url, ids, time.monotonic(), "recorder stopped 20 s")
    finally:
        recorder.stop()
        worker.stop()
    assert figures["rows"] == figures["succeeded"] == TASKS
    assert figures["transitions"] == 4 * TASKS  # sent, received, started, succeeded; none twice


def test_database_refusing_writes_20s_while_500_tasks_run_loses_no_row(
    redis_db: RedisDb, session_tmp: Path, unique: str, mariadb: tuple[str, str, str]
) -> None:
    url, name, user = mariadb
    queue, logs = f"dbout-{unique}", session_tmp / "history-db-outage"
    migrate(url)
    env = service_env(redis_db, database_url=url, extra={"HISTORY_ENABLED": "true"})
    worker = start_worker(f"dbout-{unique}", env, logs, queues=[queue], concurrency=2)
    recorder = start_history_recorder(env, logs, f"dbrec-{unique}")
    try:
        _run(MARIADB_ROOT, f"REVOKE ALL PRIVILEGES ON {name}.* FROM '{user}'@'%'")
        _kill_connections_of(user)
        refused = time.monotonic()
        ids = _run_tasks(redis_db.url, queue)
        recorder.wait_for_log(r"database write failed", timeout=30)
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - refused)))
        assert recorder.alive()
        assert _counts(f"{MARIADB_ROOT}/{name}", ids) == (0, 0, 0)  # nothing got through
        _run(MARIADB_ROOT, f"GRANT ALL PRIVILEGES ON {name}.* TO '{user}'@'%'")
        figures = _caught_up(url, ids, time.monotonic(), "database refusing writes 20 s")
        recorder.wait_for_log(r"database answers again", timeout=10)
    finally:
        recorder.stop()
        worker.stop()
    assert figures["rows"] == figures["succeeded"] == TASKS
    assert figures["transitions"] == 4 * TASKS
