"""Shared fixtures. Before anything imports ``internal``, this process takes a Redis
database number of its own (never 0) and points the settings at it, so the
application's ``celery_client`` in tests talks to that database only."""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pkg.celery_task._loop import EventLoopThread
from tests.support.services import RedisDb, port_open, require_redis, reserve_redis_db

_session_db: RedisDb | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Reserve this process's Redis database and set the environment the app reads."""
    global _session_db
    if "internal.infra.celery" in sys.modules:
        raise pytest.UsageError(
            "internal.infra.celery was imported before the test settings were set, so the "
            "application's client would use Redis database 0; import it inside a fixture"
        )
    for name in [k for k in os.environ if k.startswith(("REDIS_", "CELERY_", "MYSQL_", "API_"))]:
        del os.environ[name]
    os.environ.pop("DATABASE_URL", None)
    os.environ["CELERY_EXTRA_INCLUDE"] = "tests.support.tasks"
    if port_open(6379):
        _session_db = reserve_redis_db()
        os.environ["REDIS_DB"] = str(_session_db.number)
        os.environ["TASKSYS_TEST_REDIS_URL"] = _session_db.url
    else:
        os.environ["REDIS_DB"] = "15"  # nothing answers; tests needing Redis fail/skip
    session_tmp = Path(tempfile.mkdtemp(prefix="tasksys-tests-"))
    os.environ["DATABASE_URL"] = f"sqlite+aiosqlite:///{session_tmp}/app.db"
    config.stash[_TMP_KEY] = session_tmp


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's ``--dist loadgroup``: one per test module (its module
    fixtures start once), and one for every fault-injection module, which then run one
    after another in one process while the other process runs the rest."""
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        group = "reliability" if module.startswith("tests/reliability/") else module
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Give the database number back (emptied)."""
    if _session_db is not None:
        _session_db.release()


_TMP_KEY = pytest.StashKey[Path]()


@pytest.fixture(scope="session")
def session_tmp(request: pytest.FixtureRequest) -> Path:
    """Temporary directory of this test session (logs, SQLite files)."""
    return request.config.stash[_TMP_KEY]


@pytest.fixture(scope="session")
def session_db() -> RedisDb:
    """The Redis database the application settings of this process point to."""
    require_redis()
    if _session_db is None:
        pytest.fail("no Redis database was reserved")
    return _session_db


def _reserved_db() -> Iterator[RedisDb]:
    require_redis()
    db = reserve_redis_db()
    try:
        yield db
    finally:
        db.release()


@pytest.fixture()
def redis_db() -> Iterator[RedisDb]:
    """A further, empty Redis database for one test."""
    yield from _reserved_db()


@pytest.fixture()
def other_redis_db() -> Iterator[RedisDb]:
    """A second empty database for one test, besides ``redis_db``."""
    yield from _reserved_db()


@pytest.fixture()
def loop_thread() -> Iterator[EventLoopThread]:
    """A running event loop thread of the kind each worker process has, stopped after."""
    thread = EventLoopThread("test-loop")
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture()
def unique() -> str:
    """A short unique string for keys, queue and entry names."""
    return uuid.uuid4().hex[:12]


@dataclass
class Stack:
    """A running worker and beat on the session database, as the README starts them."""

    db: RedisDb
    env: dict[str, str]
    log_dir: Path
    database_url: str
    hook_dir: Path


@pytest.fixture(scope="session")
def stack(session_db: RedisDb, session_tmp: Path) -> Iterator[Stack]:
    """One worker (prefork, 2 processes, queue ``default``) and one beat for the session."""
    from tests.support.procs import migrate, service_env, start_beat, start_worker

    database_url = os.environ["DATABASE_URL"]
    migrate(database_url)
    log_dir = session_tmp / "stack"
    hook_dir = session_tmp / "stack-hooks"
    hook_dir.mkdir(parents=True, exist_ok=True)
    env = service_env(session_db, database_url=database_url, hook_dir=hook_dir)
    env["HISTORY_ENABLED"] = "true"  # the history tests read what this worker records
    worker = start_worker("stack-worker", env, log_dir, queues=["default"], concurrency=2)
    beat = None
    try:
        beat = start_beat("stack-beat", env, log_dir)
        yield Stack(db=session_db, env=env, log_dir=log_dir, database_url=database_url, hook_dir=hook_dir)
    finally:
        if beat is not None:
            beat.stop()
        worker.stop()


@pytest.fixture(scope="session")
def client(session_db: RedisDb):  # type: ignore[no-untyped-def]
    """The application's CeleryClient (session database), with its task registry loaded."""
    from internal.infra.celery import celery_client

    celery_client.load_tasks()
    return celery_client


API_TOKEN = "test-token-0123456789"


@dataclass
class Api:
    """A real ``uvicorn main:app`` process on the session stack, with ``API_TOKEN`` set."""

    base_url: str
    http: httpx.Client
    log_path: Path

    def url(self, path: str) -> str:
        return self.base_url + path


@pytest.fixture(scope="session")
def api(stack: Stack, session_tmp: Path) -> Iterator[Api]:
    """The HTTP API, started the way the README runs it, with bearer auth on."""
    from tests.support.procs import ManagedProcess, wait_for
    from tests.support.services import free_port

    port = free_port()
    env = {**stack.env, "API_TOKEN": API_TOKEN, "CELERY_EXTRA_QUEUES": "quarantine"}
    argv = [sys.executable, "-m", "internal.api.server", "--host", "127.0.0.1", "--port", str(port)]
    proc = ManagedProcess("api", argv, env, session_tmp / "api").start()
    base_url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(base_url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            if not proc.alive():
                raise AssertionError(f"uvicorn exited:\n{proc.log()[-3000:]}") from None
            return False

    wait_for(healthy, timeout=60, what="the API to answer /healthz")
    http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30)
    try:
        yield Api(base_url=base_url, http=http, log_path=proc.log_path)
    finally:
        http.close()
        proc.stop()
