"""The asyncio pool's pure parts: the soft-limit driver and the launcher's options."""

from __future__ import annotations

import asyncio

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from pkg.celery_task.worker.pool import POOL_PATH, _Driven
from scripts import run_celery_worker


class _FakeJob:
    soft_pending = False
    soft_timeout = 1.0


def test_soft_limit_is_raised_at_the_await_and_the_task_is_uncancelled() -> None:
    seen: list[str] = []

    async def body() -> str:
        try:
            await asyncio.sleep(10)
        except SoftTimeLimitExceeded:
            seen.append("soft")
            await asyncio.sleep(0)  # the task may still await after the soft limit
            return "cleaned up"
        return "slept"

    async def main() -> tuple[str, int]:
        job = _FakeJob()
        task = asyncio.ensure_future(_Driven(body(), job))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        job.soft_pending = True
        task.cancel()
        result = await task
        return result, task.cancelling()

    assert asyncio.run(main()) == ("cleaned up", 0)
    assert seen == ["soft"]


def test_a_plain_cancel_reaches_the_body_as_cancelled_error() -> None:
    async def body() -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.ensure_future(_Driven(body(), _FakeJob()))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())


def test_driver_returns_values_and_propagates_errors() -> None:
    async def ok() -> int:
        await asyncio.sleep(0)
        return 7

    async def bad() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    assert asyncio.run(_wrap(ok())) == 7
    with pytest.raises(ValueError, match="boom"):
        asyncio.run(_wrap(bad()))


async def _wrap(coro: object) -> object:
    return await _Driven(coro, _FakeJob())  # type: ignore[arg-type]


def test_launcher_maps_asyncio_to_celerys_custom_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERY_POOL", raising=False)
    argv = run_celery_worker.worker_argv(["--pool", "asyncio", "-c", "1000"])
    assert argv[1:3] == ["--pool=custom", "--concurrency=1000"]
    assert run_celery_worker.ASYNCIO_POOL_PATH == POOL_PATH


def test_large_concurrency_only_for_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERY_POOL", raising=False)
    with pytest.raises(SystemExit, match="only the asyncio pool"):
        run_celery_worker.main(["--pool", "threads", "-c", "1000"])
    with pytest.raises(SystemExit, match="invalid worker option"):
        run_celery_worker.main(["--pool", "asyncio", "-c", "5000"])


@pytest.mark.parametrize("bad", ["0", "65", "x", "-1", "1e3", ""])
def test_processes_must_be_a_small_whole_number(bad: str) -> None:
    with pytest.raises(SystemExit, match="--processes must be a whole number from 1 to 64"):
        run_celery_worker.processes_of(["--processes", bad])


def test_processes_option_is_taken_out_of_the_worker_arguments() -> None:
    assert run_celery_worker.processes_of(["-c", "5", "--processes=3", "-Q", "a"]) == (
        3,
        ["-c", "5", "-Q", "a"],
    )
    assert run_celery_worker.processes_of(["-c", "5"]) == (1, ["-c", "5"])
