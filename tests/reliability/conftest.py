"""Fault-injection tests: real processes, real faults, zero lost tasks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from pkg.celery_task import CeleryClient


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/reliability carries the ``reliability`` marker."""
    for item in items:
        if "tests/reliability/" in str(item.fspath):
            item.add_marker(pytest.mark.reliability)


def client_for(url: str, **extra: object) -> CeleryClient:
    """The production wiring pointed at ``url`` (a Redis URL), task registry loaded."""
    from pydantic import SecretStr

    # Imported here: conftest files load before tests/conftest.py sets the test settings.
    from internal.config.setting import RedisSettings, load_settings
    from internal.infra.celery import build_celery_client

    settings = load_settings(env_file=None)
    settings.redis = RedisSettings(url=SecretStr(url))
    client = build_celery_client(settings)
    client.app.conf.update(extra)
    client.load_tasks()
    return client


@dataclass
class Ledger:
    """Which accepted tasks ran, how often: the figures every reliability test prints."""

    name: str
    accepted: list[str] = field(default_factory=list)

    def runs(self, db: redis.Redis, key: str) -> list[str]:
        return [raw.decode() for raw in db.lrange(key, 0, -1)]

    def report(self, runs: Iterable[str], **more: object) -> dict[str, object]:
        """Print and return accepted / completed / duplicated / lost (+ extra figures)."""
        runs = list(runs)
        completed = set(runs) & set(self.accepted)
        figures: dict[str, object] = {
            "accepted": len(self.accepted),
            "completed": len(completed),
            "duplicated": len(runs) - len(set(runs)),
            "lost": len(set(self.accepted) - completed),
            **more,
        }
        print(f"\n[{self.name}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))
        return figures


@dataclass
class Rig:
    """A private Redis with one worker (``default``, 2 processes) and beat on it; tasks
    ``tests.hardening.append_file`` record runs in ``runs_file``, a 1 s periodic entry
    records beat's ticks in ``ticks_file``."""

    server: Any
    admin: redis.Redis
    client: CeleryClient
    worker: Any
    beat: Any
    runs_file: Path
    ticks_file: Path

    def stop(self) -> tuple[int | None, int | None]:
        """Warm-stop beat, then the worker; their exit codes."""
        return self.beat.stop(), self.worker.stop()


@contextmanager
def worker_and_beat(session_tmp: Path, name: str, **redis_options: Any) -> Iterator[Rig]:
    """A :class:`Rig` for the block, everything stopped (by PID) even on failure."""
    from tests.support.hardening_tasks import INCLUDE
    from tests.support.procs import service_env, start_beat, start_worker
    from tests.support.services import private_redis

    with private_redis(**redis_options) as server:
        env = service_env(
            server.url,
            database_url=f"sqlite+aiosqlite:///{session_tmp}/{name}.db",
            extra={"CELERY_EXTRA_INCLUDE": INCLUDE},
        )
        logs = session_tmp / name
        ticks_file = session_tmp / f"{name}-ticks.txt"
        admin = redis.Redis.from_url(server.url, socket_timeout=10)
        client = client_for(server.url)
        client.add_periodic_task(
            "tests.hardening.append_file", "interval", 1, name=f"{name}-tick", args=[str(ticks_file)]
        )
        worker = start_worker(name, env, logs, queues=["default"], concurrency=2)
        try:
            beat = start_beat(f"{name}-beat", env, logs)
        except BaseException:
            worker.stop()
            raise
        rig = Rig(server, admin, client, worker, beat, session_tmp / f"{name}-runs.txt", ticks_file)
        try:
            yield rig
        finally:
            rig.stop()
            admin.close()
