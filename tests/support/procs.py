"""Start and stop real processes (celery worker/beat, uvicorn, scripts) for tests.

Every process starts in its own session, so stopping it by its PID also reaches the
pool children it forked; nothing else is ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support.services import HOST, REDIS_PORT, RedisDb

REPO_ROOT = Path(__file__).resolve().parents[2]
CELERY_APP = "internal.infra.celery.celery_app"
#: ``TASKSYS_TEST_POOL=asyncio`` starts every worker that names no pool of its own with
#: the asyncio pool (``--pool custom``), so the worker tests run once on each pool.
TEST_POOL = os.environ.get("TASKSYS_TEST_POOL", "prefork")
ASYNCIO_POOL_PATH = "pkg.celery_task.worker.pool:AsyncioPool"
#: A test of what only a pool of child processes does (replace or recycle a process).
prefork_only = pytest.mark.skipif(
    TEST_POOL == "asyncio", reason="the asyncio pool runs tasks in the worker process: no child to replace"
)

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.1, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


class ManagedProcess:
    """A child process with its output in a log file, stopped by PID on ``stop()``."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """PID of the started process."""
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.process.pid

    def start(self) -> ManagedProcess:
        """Start the process in its own session, output appended to the log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until the log matches ``pattern``; fail early if the process exits."""

        def found() -> re.Match[str] | None:
            match = re.search(pattern, self.log())
            if match is None and self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode} before logging "
                    f"{pattern!r}:\n{self.log()[-4000:]}"
                )
            return match

        return wait_for(found, timeout, what=f"{self.name} to log {pattern!r}")

    def alive(self) -> bool:
        """True while the main process runs."""
        return self.process is not None and self.process.poll() is None

    def send(self, sig: int) -> None:
        """Send a signal to the main process."""
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        """Wait for the main process to exit; its return code."""
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.process.wait(timeout)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process and everything in its session, as a crash would."""
        if self.process is None:
            return
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """Warm stop (SIGTERM) and wait; SIGKILL the session if it does not exit."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.send(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._signal_group(signal.SIGKILL)  # stray children, if any
        return self.process.returncode


def service_env(
    db: RedisDb | str,
    *,
    database_url: str,
    extra: Mapping[str, str] | None = None,
    hook_dir: Path | None = None,
) -> dict[str, str]:
    """Environment for project processes using Redis database ``db`` (or a Redis URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_", "MYSQL_", "API_"))}
    env.pop("DATABASE_URL", None)
    if isinstance(db, RedisDb):
        env.update(REDIS_HOST=HOST, REDIS_PORT=str(REDIS_PORT), REDIS_DB=str(db.number))
        env["TASKSYS_TEST_REDIS_URL"] = db.url
    else:
        env["REDIS_URL"] = db
        env["TASKSYS_TEST_REDIS_URL"] = db
    env.update(
        DATABASE_URL=database_url,
        CELERY_EXTRA_INCLUDE="tests.support.tasks",
        PYTHONPATH=str(REPO_ROOT),
        PYTHONUNBUFFERED="1",
        CELERY_CUSTOM_WORKER_POOL=ASYNCIO_POOL_PATH,  # read only by ``--pool custom``
    )
    if hook_dir is not None:
        env["TASKSYS_TEST_HOOK_DIR"] = str(hook_dir)
    env.update(extra or {})
    return env


def worker_argv(
    *,
    queues: Iterable[str],
    hostname: str,
    concurrency: int = 2,
    pool: str | None = None,
    loglevel: str = "info",
    extra: Iterable[str] = (),
) -> list[str]:
    """``celery -A internal.infra.celery.celery_app worker`` as the README runs it; the
    pool is :data:`TEST_POOL` unless named (``asyncio`` is Celery's ``custom``)."""
    pool = pool or ("custom" if TEST_POOL == "asyncio" else TEST_POOL)
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        CELERY_APP,
        "worker",
        "-l",
        loglevel,
        "-Q",
        ",".join(queues),
        "-c",
        str(concurrency),
        "-P",
        pool,
        "-n",
        hostname,
        "--without-mingle",
        "--without-gossip",
        *extra,
    ]


def beat_argv(loglevel: str = "info") -> list[str]:
    """``celery -A internal.infra.celery.celery_app beat`` as the README runs it."""
    return [sys.executable, "-m", "celery", "-A", CELERY_APP, "beat", "-l", loglevel]


def start_worker(name: str, env: Mapping[str, str], log_dir: Path, **kwargs: object) -> ManagedProcess:
    """Start a worker and wait until it is ready to take tasks."""
    hostname = f"{name}@%h"
    proc = ManagedProcess(name, worker_argv(hostname=hostname, **kwargs), env, log_dir).start()  # type: ignore[arg-type]
    proc.wait_for_log(r"\bready\.", timeout=60)
    return proc


def start_beat(name: str, env: Mapping[str, str], log_dir: Path, *, wait_lock: bool = True) -> ManagedProcess:
    """Start beat; by default wait until it holds the schedule lock."""
    proc = ManagedProcess(name, beat_argv(), env, log_dir).start()
    proc.wait_for_log(r"beat: Acquired lock" if wait_lock else r"beat: Starting", timeout=60)
    return proc


def start_history_recorder(env: Mapping[str, str], log_dir: Path, name: str = "recorder") -> ManagedProcess:
    """Start ``scripts/run_history_recorder.py`` as consumer ``name`` and wait until it reads."""
    argv = [sys.executable, str(REPO_ROOT / "scripts/run_history_recorder.py"), "--consumer", name]
    proc = ManagedProcess(name, argv, env, log_dir).start()
    proc.wait_for_log(r"history recorder \S+ reading", timeout=30)
    return proc


def migrate(database_url: str) -> None:
    """Run ``alembic upgrade head`` on ``database_url``."""
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
