"""Worker launcher argument handling and the per-process event loop (pure logic)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pkg.celery_task import EventLoopThread
from scripts import run_celery_worker


def test_environment_defaults_and_flag_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_POOL", "solo")
    monkeypatch.setenv("CELERY_CONCURRENCY", "7")
    monkeypatch.setenv("CELERY_LOGLEVEL", "warning")
    monkeypatch.setenv("CELERY_QUEUES", "a,b")
    assert run_celery_worker.worker_argv([]) == [
        "worker",
        "--pool=solo",
        "--concurrency=7",
        "--loglevel=warning",
        "--queues=a,b",
    ]
    assert run_celery_worker.worker_argv(["-c", "2", "--queues", "x", "--max-tasks-per-child=10"]) == [
        "worker",
        "--pool=solo",
        "--concurrency=2",
        "--loglevel=warning",
        "--queues=x",
        "--max-tasks-per-child=10",
    ]


def test_bad_flag_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit, match="invalid worker option"):
        run_celery_worker.main(["--pool", "fibers"])


def test_windows_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_celery_worker.sys, "platform", "win32")
    with pytest.raises(SystemExit, match="Windows is not supported"):
        run_celery_worker.main([])


def test_event_loop_thread_is_long_lived_and_cancels_on_interrupt() -> None:
    runner = EventLoopThread()
    loops = {runner.run(_loop_id()) for _ in range(3)}
    assert len(loops) == 1
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        runner.run(slow(), timeout=0.1)
    assert cancelled.wait(2)
    runner.stop()
    runner.stop()
    assert not runner.running


async def _loop_id() -> int:
    return id(asyncio.get_running_loop())
