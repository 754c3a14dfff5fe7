"""Submit on commit (issue 12, point 4): an outbox row in the caller's transaction, the
publish after the commit, and the relay (beat every 2 s, run by a real worker) for rows
a crash or a broker outage left behind. Real Redis, a SQLite file and a MariaDB
database, real worker and beat processes; task runs are counted by ``tests.record``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from internal.config.setting import RedisSettings, load_settings
from internal.infra.celery import build_celery_client
from pkg.celery_task import (
    OUTBOX_CLIENT_KEY,
    OUTBOX_TABLE,
    BrokerUnavailableError,
    CeleryClient,
    InvalidRequestError,
    UnknownTaskError,
    submit_on_commit,
)
from tests.support.procs import (
    REPO_ROOT,
    migrate,
    service_env,
    start_beat,
    start_worker,
    wait_for,
)
from tests.support.services import RedisDb, private_redis, require_mariadb, reserve_redis_db

pytestmark = pytest.mark.integration

MARIADB_ROOT = "mysql+asyncmy://root@127.0.0.1:3306"


@dataclass
class OutboxStack:
    """A worker (queue ``default``) and beat on their own Redis database and database URL."""

    db: RedisDb
    client: CeleryClient
    async_url: str
    env: dict[str, str]

    def runs(self, key: str) -> list[Any]:
        """What ``tests.record`` appended to ``key``: one value per run."""
        return [json.loads(raw)["value"] for raw in self.db.client.lrange(key, 0, -1)]

    def outbox_ids(self) -> list[str]:
        """Task ids still in the outbox."""

        async def read() -> list[str]:
            engine = create_async_engine(self.async_url)
            try:
                async with engine.connect() as conn:
                    return [r[0] for r in await conn.execute(select(OUTBOX_TABLE.c.task_id))]
            finally:
                await engine.dispose()

        return asyncio.run(read())


def _client_for(db: RedisDb) -> CeleryClient:
    settings = load_settings(env_file=None)
    settings.redis = RedisSettings(db=db.number)
    client = build_celery_client(settings)
    client.load_tasks()
    return client


def _claimed(stack: OutboxStack, task_id: str) -> bool:
    """Whether any send claimed ``task_id`` (every publish does, first)."""
    return bool(stack.db.client.exists(f"tasksys:task_id:{task_id}"))


def _run_stack(name: str, async_url: str, log_dir: Path) -> Iterator[OutboxStack]:
    migrate(async_url)
    db = reserve_redis_db()
    client = _client_for(db)
    env = service_env(db, database_url=async_url)
    worker = beat = None
    try:
        worker = start_worker(f"{name}-worker", env, log_dir, queues=["default"], concurrency=2)
        beat = start_beat(f"{name}-beat", env, log_dir)
        yield OutboxStack(db=db, client=client, async_url=async_url, env=env)
    finally:
        if beat is not None:
            beat.stop()
        if worker is not None:
            worker.stop()
        client.close()
        db.release()


@pytest.fixture(scope="module")
def sqlite_stack(session_tmp: Path) -> Iterator[OutboxStack]:
    """Worker and beat on a SQLite file the tests also open with a sync engine."""
    path = session_tmp / f"outbox-{os.getpid()}.db"
    yield from _run_stack("outbox-sqlite", f"sqlite+aiosqlite:///{path}", session_tmp / "outbox")


def _sync_url(stack: OutboxStack) -> str:
    return stack.async_url.replace("sqlite+aiosqlite://", "sqlite://")


def test_session_commit_sends_once_rollback_sends_nothing(sqlite_stack: OutboxStack, unique: str) -> None:
    stack = sqlite_stack
    engine = create_engine(_sync_url(stack))
    try:
        with Session(engine) as session:
            kept = stack.client.submit_on_commit(session, "tests.record", (f"kept-{unique}", "committed"))
            session.commit()
        with Session(engine) as session:
            dropped = submit_on_commit(
                session, "tests.record", (f"dropped-{unique}", "rolled back"), client=stack.client
            )
            session.flush()  # the row is written inside the transaction ...
            assert session.scalar(select(func.count()).select_from(OUTBOX_TABLE)) >= 1
            session.rollback()  # ... and goes with it
    finally:
        engine.dispose()
    wait_for(lambda: stack.runs(f"kept-{unique}"), timeout=20, what="the committed task to run")
    # The relay trims the row once it sees the id was sent; it never sends it again.
    wait_for(lambda: kept not in stack.outbox_ids(), timeout=15, what="the relay to trim the sent row")
    time.sleep(1.0)  # a second send, had there been one, would have run by now
    assert stack.runs(f"kept-{unique}") == ["committed"]
    assert stack.client.get_result(kept, timeout=5) == "committed"
    assert stack.runs(f"dropped-{unique}") == []
    assert not _claimed(stack, dropped) and dropped not in stack.outbox_ids()
    assert stack.client.get_status(dropped) == "PENDING"


def test_async_session_commit_sends_once_rollback_sends_nothing(
    sqlite_stack: OutboxStack, unique: str
) -> None:
    stack = sqlite_stack

    async def scenario() -> tuple[str, str]:
        engine = create_async_engine(stack.async_url)
        # The sessionmaker names the client, so the module-level function needs no client=.
        maker = async_sessionmaker(engine, info={OUTBOX_CLIENT_KEY: stack.client})
        try:
            async with maker() as session, session.begin():
                kept = submit_on_commit(session, "tests.record", (f"akept-{unique}", "async"))
            async with maker() as session:
                dropped = submit_on_commit(
                    session, "tests.record", (f"adropped-{unique}", "no"), task_id=f"adropped-{unique}"
                )
                await session.flush()
                await session.rollback()
            return kept, dropped
        finally:
            await engine.dispose()

    kept, dropped = asyncio.run(scenario())
    assert dropped == f"adropped-{unique}"
    wait_for(lambda: stack.runs(f"akept-{unique}"), timeout=20, what="the committed task to run")
    wait_for(lambda: kept not in stack.outbox_ids(), timeout=15, what="the relay to trim the sent row")
    time.sleep(1.0)
    assert stack.runs(f"akept-{unique}") == ["async"]
    assert stack.runs(f"adropped-{unique}") == [] and not _claimed(stack, dropped)


CRASHING_SUBMITTER = """
import os, signal, sys
from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session
from internal.infra.celery import celery_client

engine = create_engine(sys.argv[1])
with Session(engine) as session:
    # Listeners run in the order they were added: this one, before the outbox's publish.
    event.listen(session, "after_commit", lambda _s: os.kill(os.getpid(), signal.SIGKILL))
    print(celery_client.submit_on_commit(session, "tests.record", (sys.argv[2], "crash")), flush=True)
    session.commit()
print("survived the commit", flush=True)
"""


def test_process_killed_between_commit_and_publish_is_relayed_once(
    sqlite_stack: OutboxStack, unique: str
) -> None:
    stack, key = sqlite_stack, f"crash-{unique}"
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_SUBMITTER, _sync_url(stack), key],
        env=stack.env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    killed_at = time.monotonic()
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    task_id = proc.stdout.split()[0]
    assert "survived" not in proc.stdout
    assert not _claimed(stack, task_id), "the task was published before the kill"
    assert stack.outbox_ids().count(task_id) == 1  # committed: the row is there
    wait_for(lambda: stack.runs(key), timeout=10, what="the relay to send the crashed process's task")
    took = time.monotonic() - killed_at
    print(f"relayed {took:.1f} s after the kill")
    wait_for(lambda: task_id not in stack.outbox_ids(), timeout=15, what="the relay to trim the row")
    time.sleep(1.0)
    assert stack.runs(key) == ["crash"], f"relayed after {took:.1f} s"
    assert stack.client.get_result(task_id, timeout=5) == "crash"


def test_bad_input_raises_before_anything_is_written(sqlite_stack: OutboxStack) -> None:
    stack = sqlite_stack
    engine = create_engine(_sync_url(stack))
    try:
        with Session(engine) as session:
            with pytest.raises(UnknownTaskError):
                stack.client.submit_on_commit(session, "no.such.task", (1,))
            with pytest.raises(InvalidRequestError, match="priority"):
                stack.client.submit_on_commit(session, "tests.record", ("k",), priority=10)
            with pytest.raises(InvalidRequestError, match="task_id|task id"):
                stack.client.submit_on_commit(session, "tests.record", ("k",), task_id="bad id!")
            with pytest.raises(InvalidRequestError, match="no client"):
                submit_on_commit(session, "tests.record", ("k",))
            assert not session.new
        with pytest.raises(InvalidRequestError, match="Session or AsyncSession"):
            stack.client.submit_on_commit(object(), "tests.record", ("k",))  # type: ignore[arg-type]
    finally:
        engine.dispose()


def test_relay_trims_sent_rows_and_sends_what_an_outage_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with private_redis() as server:
        client = CeleryClient("outbox-relay", broker_url=server.url, backend_url=server.url)
        engine = create_engine(f"sqlite:///{tmp_path}/relay.db")
        OUTBOX_TABLE.metadata.create_all(engine)
        maker = sessionmaker(engine, info={OUTBOX_CLIENT_KEY: client})

        def rows() -> list[str]:
            with engine.connect() as conn:
                return [r[0] for r in conn.execute(select(OUTBOX_TABLE.c.task_id))]

        def queued() -> int:
            return client.queue_lengths(["default"])["default"]

        try:
            with maker() as session:
                sent = submit_on_commit(session, "tests.record", ("k", 1))
                session.commit()
            assert queued() == 1 and rows() == [sent]
            # Already published: the relay deletes the row and sends nothing.
            assert client.relay_outbox(engine, grace=0) == {
                "sent": 0,
                "already_sent": 1,
                "left": 0,
                "skipped": 0,
            }
            assert queued() == 1 and rows() == []

            # A caller's id that is already known is refused at publish time: not sent.
            client.submit("tests.record", ("k", 0), task_id="known-id")
            with caplog.at_level(logging.INFO, logger="pkg.celery_task._outbox"), maker() as session:
                submit_on_commit(session, "tests.record", ("k", 0), task_id="known-id")
                session.commit()
            assert "known-id" in caplog.text and "not sent after commit" in caplog.text
            assert queued() == 2 and rows() == ["known-id"]
            assert client.relay_outbox(engine, grace=0)["already_sent"] == 1
            assert queued() == 2 and rows() == []
            caplog.clear()

            server.stop()
            with caplog.at_level(logging.WARNING, logger="pkg.celery_task._outbox"), maker() as session:
                waiting = submit_on_commit(session, "tests.record", ("k", 2), countdown=1)
                more = [submit_on_commit(session, "tests.record", ("k", i)) for i in range(3, 7)]
                session.commit()  # the broker is down: the commit still succeeds
            assert "left for the relay" in caplog.text
            assert sorted(rows()) == sorted([waiting, *more])
            with pytest.raises(BrokerUnavailableError):
                client.relay_outbox(engine, grace=0)
            assert len(rows()) == 5

            server.start()  # an empty Redis: no claims, no messages
            broker = redis.Redis.from_url(server.url)
            broker.set("tasksys:outbox:relay", "another relay", px=30_000)
            busy = client.relay_outbox(engine, grace=0)  # one batch at a time
            assert busy == {"sent": 0, "already_sent": 0, "left": 5, "skipped": 1} and len(rows()) == 5
            broker.delete("tasksys:outbox:relay")
            report = client.relay_outbox(engine, grace=0, limit=2)  # three batches in one call
            assert report == {"sent": 5, "already_sent": 0, "left": 0, "skipped": 0}
            assert rows() == [] and queued() == 5
            messages = [json.loads(m) for key in broker.keys("default*") for m in broker.lrange(key, 0, -1)]
            headers = {m["headers"]["id"]: m["headers"] for m in messages}
            assert sorted(headers) == sorted([waiting, *more])
            assert headers[waiting]["eta"] and not headers[more[0]]["eta"]  # its countdown was kept
            assert client.relay_outbox(engine, grace=0) == {
                "sent": 0,
                "already_sent": 0,
                "left": 0,
                "skipped": 0,
            }
            assert queued() == 5
        finally:
            engine.dispose()
            client.close()


@pytest.fixture()
def mariadb_stack(unique: str, session_tmp: Path) -> Iterator[OutboxStack]:
    """Worker and beat on a database of their own on the shared MariaDB, dropped after."""
    require_mariadb()
    name = f"tasksys_outbox_{unique}"

    async def execute(statement: str) -> None:
        engine = create_async_engine(MARIADB_ROOT)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(execute(f"CREATE DATABASE {name}"))
    try:
        yield from _run_stack(
            "outbox-mariadb", f"{MARIADB_ROOT}/{name}?charset=utf8mb4", session_tmp / "outbox"
        )
    finally:
        asyncio.run(execute(f"DROP DATABASE IF EXISTS {name}"))


def test_mariadb_commit_sends_once_savepoint_and_rollback_send_nothing(
    mariadb_stack: OutboxStack, unique: str
) -> None:
    stack = mariadb_stack

    async def scenario() -> tuple[str, str, str, str]:
        engine = create_async_engine(stack.async_url)
        try:
            async with AsyncSession(engine) as session, session.begin():
                kept = stack.client.submit_on_commit(session, "tests.record", (f"mkept-{unique}", "mariadb"))
                nested = await session.begin_nested()
                undone = stack.client.submit_on_commit(session, "tests.record", (f"mundone-{unique}", "no"))
                await session.flush()
                await nested.rollback()  # the savepoint's row goes; the transaction commits
            async with AsyncSession(engine) as session:
                dropped = stack.client.submit_on_commit(session, "tests.record", (f"mdropped-{unique}", "no"))
                async with session.begin_nested():  # a released savepoint commits nothing yet
                    released = stack.client.submit_on_commit(
                        session, "tests.record", (f"mreleased-{unique}", "no")
                    )
                await session.rollback()
            return kept, undone, dropped, released
        finally:
            await engine.dispose()

    kept, undone, dropped, released = asyncio.run(scenario())
    wait_for(lambda: stack.runs(f"mkept-{unique}"), timeout=20, what="the committed task to run")
    wait_for(lambda: kept not in stack.outbox_ids(), timeout=15, what="the relay to trim the sent row")
    time.sleep(1.0)
    assert stack.runs(f"mkept-{unique}") == ["mariadb"]
    for task_id, key in (
        (undone, f"mundone-{unique}"),
        (dropped, f"mdropped-{unique}"),
        (released, f"mreleased-{unique}"),
    ):
        assert stack.runs(key) == [] and not _claimed(stack, task_id)
    assert stack.outbox_ids() == []


def test_migration_creates_the_table_the_package_defines(sqlite_stack: OutboxStack) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from internal.models import Base

    engine = create_engine(_sync_url(sqlite_stack))
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        engine.dispose()
