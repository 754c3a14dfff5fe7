"""Fault-injection tests: real processes, real faults, zero lost tasks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

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
