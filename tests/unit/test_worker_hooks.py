"""Worker hooks connect one receiver per Celery signal for the whole process, however
many clients it builds, and a disconnected client's hooks no longer run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from celery import signals as celery_signals
from celery.app import app_or_default

from pkg.celery_task.worker import WorkerHooks, install
from pkg.celery_task.worker.config import CONSUMER_STEPS

SIGNALS = (
    celery_signals.worker_init,
    celery_signals.worker_process_init,
    celery_signals.worker_process_shutdown,
    celery_signals.worker_shutdown,
    celery_signals.after_setup_logger,
    celery_signals.after_setup_task_logger,
)


def _counts() -> list[int]:
    return [len(sig.receivers) for sig in SIGNALS]


@pytest.fixture()
def current_app_restored() -> Iterator[None]:
    previous = app_or_default()
    try:
        yield
    finally:
        previous.set_current()


def test_many_clients_connect_one_receiver_per_signal_and_disconnect_removes_them() -> None:
    before = _counts()
    hooks = [install(Celery(f"hooks-{n}", set_as_current=False)) for n in range(5)]
    during = _counts()
    assert all(b <= d <= b + 1 for b, d in zip(before, during, strict=True)), (before, during)
    for each in hooks:
        each.disconnect()
        each.disconnect()  # safe twice
    assert _counts() == before


def test_a_disconnected_client_no_longer_runs_its_hooks(current_app_restored: None) -> None:
    app = Celery("hooks-run", set_as_current=False)
    hooks = install(app)
    runs: list[str] = []
    hooks.register(lambda: runs.append("started"), None)
    app.set_current()
    try:
        celery_signals.worker_process_init.send(sender=None)
        assert runs == ["started"]
        hooks.disconnect()
        celery_signals.worker_process_init.send(sender=None)
        assert runs == ["started"]
    finally:
        hooks.disconnect()


def test_install_adds_the_bootsteps_and_the_backend_and_returns_the_hooks() -> None:
    from pkg.celery_task.worker.backend import TimedRedisBackend

    app = Celery("hooks-install", backend="redis://127.0.0.1:1/0", set_as_current=False)
    hooks = install(app)
    try:
        assert isinstance(hooks, WorkerHooks) and hooks.app is app
        assert set(CONSUMER_STEPS) <= set(app.steps["consumer"])
        assert app.loader.override_backends["redis"] == "pkg.celery_task.worker.backend:TimedRedisBackend"
        assert app.loader.override_backends["rediss"] == "pkg.celery_task.worker.backend:TimedRedisBackend"
        assert type(app.backend) is TimedRedisBackend  # built without connecting
    finally:
        hooks.disconnect()


def test_worker_conf_names_classes_celery_and_kombu_can_load() -> None:
    from kombu.utils.imports import symbol_by_name

    from pkg.celery_task.worker import PriorityRedisTransport, worker_conf
    from pkg.celery_task.worker.consumer import Consumer

    conf = worker_conf(redis_broker=True)
    assert symbol_by_name(conf["worker_consumer"]) is Consumer
    assert symbol_by_name(conf["broker_transport"]) is PriorityRedisTransport
    assert conf["broker_transport_options"]["unacked_index_key"] == "tasksys:unacked_index"
    assert worker_conf(redis_broker=False) == {"worker_consumer": conf["worker_consumer"]}
