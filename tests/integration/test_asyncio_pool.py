"""The asyncio pool on real worker processes, started as the README says:
``celery -A internal.infra.celery.celery_app worker --pool custom`` with
``CELERY_CUSTOM_WORKER_POOL=pkg.celery_task.worker.pool:AsyncioPool``."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pkg.celery_task import CeleryClient
from pkg.celery_task.worker.pool import POOL_PATH
from tests.conftest import Stack
from tests.support.procs import REPO_ROOT, ManagedProcess, service_env, start_worker, wait_for

pytestmark = pytest.mark.integration

INCLUDE = "tests.support.tasks,tests.support.async_tasks"


@dataclass
class AioWorker:
    proc: ManagedProcess
    queue: str
    env: dict[str, str]


def _env(stack: Stack, **extra: str) -> dict[str, str]:
    return service_env(
        stack.db,
        database_url=stack.database_url,
        extra={"CELERY_EXTRA_INCLUDE": INCLUDE, "CELERY_CUSTOM_WORKER_POOL": POOL_PATH, **extra},
    )


@pytest.fixture(scope="module")
def aio(stack: Stack, session_tmp: Path) -> Iterator[AioWorker]:
    """One asyncio worker with 200 slots for the module."""
    import tests.support.async_tasks  # noqa: F401  (registers the tasks for the client's checks)

    queue = f"aio-{time.time_ns()}"
    env = _env(stack)
    proc = start_worker(
        f"aio-{queue}", env, session_tmp / "aio", queues=[queue], concurrency=200, pool="custom"
    )
    try:
        yield AioWorker(proc, queue, env)
    finally:
        proc.stop()


def _events(client: CeleryClient, key: str) -> list[dict[str, object]]:
    from tests.support.tasks import test_redis

    return [json.loads(raw) for raw in test_redis().lrange(key, 0, -1)]


def test_600_awaiting_tasks_overlap_on_one_worker(aio: AioWorker, client: CeleryClient, unique: str) -> None:
    key = f"nap-{unique}"
    ids = client.submit_many(
        [{"task_name": "aio.nap", "args": [1.0, key], "queue": aio.queue} for _ in range(600)]
    )
    began = time.monotonic()
    for task_id in ids:
        assert client.get_result(task_id, timeout=60) == 1.0
    elapsed = time.monotonic() - began
    starts = sorted(float(e["t"]) for e in _events(client, key))  # type: ignore[arg-type]
    assert len(starts) == 600
    # They overlap: many start before the first one's 1 s await is over (serially, one).
    assert sum(t < starts[0] + 1.0 for t in starts) >= 50, starts[:60]
    assert elapsed < 30, elapsed


def test_a_saturated_loop_takes_no_more_tasks_than_it_can_run(
    aio: AioWorker, client: CeleryClient, unique: str
) -> None:
    """Tasks that each hold the loop 10 ms (CPU) and then await: with all 200 slots
    taken at once the loop would lag seconds. The fetch window keeps what runs at once
    well below the concurrency and runs every task; tasks that only await still fill
    the 200 slots."""

    def peak(spin: float, seconds: float, count: int) -> int:
        key = f"busy-{spin}-{unique}"
        request = {"task_name": "aio.busy", "args": [spin, seconds, key], "queue": aio.queue}
        ids = client.submit_many([request] * count)
        return max(client.get_result(task_id, timeout=120) for task_id in ids)

    # Without the window (CELERY_ASYNCIO_LAG_TARGET=0): 128-147 at once; with it: 25-30.
    assert peak(0.01, 0.2, 300) <= 90
    assert peak(0.0, 1.0, 400) >= 180
    stats = _pool_stats(client, aio)
    assert stats["fetch-window-changes"][1] > 0, stats  # it shrank


def _check_own_requests(client: CeleryClient, queue: str) -> None:
    ids = [client.submit("aio.whoami", [0.5], queue=queue).id for _ in range(20)]
    for task_id in ids:
        assert client.get_result(task_id, timeout=60) == {"before": task_id, "after": task_id, "retries": 0}


def test_async_bodies_see_their_own_request_while_many_interleave(
    aio: AioWorker, client: CeleryClient
) -> None:
    _check_own_requests(client, aio.queue)


def test_async_bodies_see_their_own_request_on_prefork(
    stack: Stack, client: CeleryClient, session_tmp: Path, unique: str
) -> None:
    import tests.support.async_tasks  # noqa: F401  (registers the tasks for the client's checks)

    queue = f"aio-prefork-{unique}"
    proc = start_worker(
        f"aio-prefork-{unique}", _env(stack), session_tmp / "aio", queues=[queue], concurrency=2
    )
    try:
        _check_own_requests(client, queue)
        progress = client.submit("aio.whoami", [3.0], queue=queue)
        wait_for(lambda: client.get_status(progress.id) == "PROGRESS", timeout=20, what="a progress report")
        assert client.get_result(progress.id, timeout=30)["after"] == progress.id
    finally:
        proc.stop()


def test_sync_task_runs_in_an_executor_thread(aio: AioWorker, client: CeleryClient) -> None:
    name = client.get_result(client.submit("aio.sync_where", queue=aio.queue).id, timeout=30)
    assert name.startswith("tasksys-aio")


def _pool_stats(client: CeleryClient, aio: AioWorker) -> dict[str, Any]:
    replies = client.app.control.inspect(timeout=5).stats() or {}
    mine = [stats["pool"] for name, stats in replies.items() if name.startswith(f"aio-{aio.queue}@")]
    assert len(mine) == 1, replies.keys()
    return dict(mine[0])


def test_async_tasks_are_traced_on_the_loop_and_sync_ones_in_threads(
    aio: AioWorker, client: CeleryClient, unique: str
) -> None:
    """The consumer's hub runs on the loop, which traces ``async def`` tasks itself
    (in greenlets, their Redis writes pipelined); sync tasks go to the executor threads.
    Remote control still answers."""
    before = _pool_stats(client, aio)
    naps = [client.submit("aio.nap", [0.2, f"traced-{unique}"], queue=aio.queue).id for _ in range(20)]
    syncs = [client.submit("aio.sync_where", queue=aio.queue).id for _ in range(3)]
    assert [client.get_result(i, timeout=30) for i in naps] == [0.2] * 20
    assert all(client.get_result(i, timeout=30).startswith("tasksys-aio") for i in syncs)
    after = _pool_stats(client, aio)
    assert after["hub-on-loop"] is True
    assert after["traced-on-loop"] - before["traced-on-loop"] == 20
    assert after["traced-in-threads"] - before["traced-in-threads"] == 3
    # Their result stores and acks went out pipelined (a first NOSCRIPT falls back),
    # tracers finishing in the same loop turn sharing round trips.
    writes = after["pipelined-writes"] - before["pipelined-writes"]
    trips = after["pipelined-round-trips"] - before["pipelined-round-trips"]
    assert writes >= 2 * 20 - 2, (writes, trips)
    assert trips < writes, (writes, trips)


def test_soft_limit_reaches_the_coroutine_and_others_go_on(
    aio: AioWorker, client: CeleryClient, unique: str
) -> None:
    key = f"soft-{unique}"
    limited = client.submit("aio.soft", [key], queue=aio.queue)
    others = [client.submit("aio.nap", [1.5, f"other-{unique}"], queue=aio.queue) for _ in range(5)]
    assert client.get_result(limited.id, timeout=30) == "soft-limit-handled"
    assert [client.get_result(o.id, timeout=30) for o in others] == [1.5] * 5
    assert [e["value"] for e in _events(client, key)] == ["soft-limit"]


def test_hard_limit_cancels_and_records_failure(aio: AioWorker, client: CeleryClient, unique: str) -> None:
    from tests.support.tasks import test_redis

    key = f"hard-{unique}"
    other = client.submit("aio.nap", [2.0, f"o-{unique}"], queue=aio.queue)
    limited = client.submit("aio.hard", [key], queue=aio.queue)
    error = client.get_result(limited.id, timeout=30, propagate=False)
    assert type(error).__name__ == "TimeLimitExceeded", error
    assert client.get_status(limited.id) == "FAILURE"
    assert test_redis().lrange(key, 0, -1) == [b"cancelled"]
    assert client.get_result(other.id, timeout=30) == 2.0


def test_revoke_terminate_cancels_a_running_coroutine(
    aio: AioWorker, client: CeleryClient, unique: str
) -> None:
    key = f"rev-{unique}"
    running = client.submit("aio.nap", [30.0, key], queue=aio.queue)
    wait_for(lambda: _events(client, key), timeout=30, what="the task to start")
    client.revoke(running.id, terminate=True)
    wait_for(lambda: client.get_status(running.id) == "REVOKED", timeout=15, what="REVOKED")
    time.sleep(0.5)  # the cancelled coroutine must not overwrite REVOKED
    assert client.get_status(running.id) == "REVOKED"


def test_startup_hook_clients_serve_100_concurrent_tasks(aio: AioWorker, client: CeleryClient) -> None:
    ids = client.submit_many([{"task_name": "tests.hook_probe", "queue": aio.queue} for _ in range(100)])
    probes = [client.get_result(task_id, timeout=60) for task_id in ids]
    assert all(p["ping"] is True and p["db"] == 1 for p in probes)
    assert {(p["pid"], p["redis_client"], p["loop"]) for p in probes} == {
        (aio.proc.pid, probes[0]["redis_client"], probes[0]["loop"])
    }


def test_more_tasks_than_connections_wait_for_the_hook_client(
    aio: AioWorker, client: CeleryClient, unique: str
) -> None:
    """200 tasks at once each hold one of the hook client's 100 connections for 0.5 s:
    the ones that find none free wait for one instead of failing (and being retried)."""
    from internal.infra.redis import MAX_CONNECTIONS

    count = 2 * MAX_CONNECTIONS
    ids = client.submit_many(
        [
            {"task_name": "aio.hold_connection", "args": [f"nothing-{unique}", 0.5], "queue": aio.queue}
            for _ in range(count)
        ]
    )
    results = [client.get_result(task_id, timeout=60, propagate=False) for task_id in ids]
    assert results == [0] * count, [r for r in results if r != 0][:3]


def test_a_task_blocking_the_loop_is_reported(aio: AioWorker, client: CeleryClient) -> None:
    result = client.submit("aio.block", [1.5], queue=aio.queue)
    assert client.get_result(result.id, timeout=30) == "blocked"
    aio.proc.wait_for_log(r"event loop blocked for [\d.]+ s by task aio\.block\[", timeout=10)


def test_warm_shutdown_with_coroutines_running_loses_nothing(
    stack: Stack, client: CeleryClient, session_tmp: Path, unique: str
) -> None:
    import tests.support.async_tasks  # noqa: F401

    queue, key = f"aiowarm-{unique}", f"warm-{unique}"
    env = _env(stack)
    proc = start_worker(
        f"aiowarm-{unique}", env, session_tmp / "aio", queues=[queue], concurrency=20, pool="custom"
    )
    try:
        ids = client.submit_many(
            [{"task_name": "aio.nap", "args": [2.0, key], "queue": queue} for _ in range(40)]
        )
        wait_for(lambda: len(_events(client, key)) >= 20, timeout=30, what="20 tasks running")
        proc.send(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        proc.stop()
    proc2 = start_worker(
        f"aiowarm2-{unique}", env, session_tmp / "aio", queues=[queue], concurrency=50, pool="custom"
    )
    try:
        assert [client.get_result(i, timeout=60) for i in ids] == [2.0] * 40
    finally:
        proc2.stop()


def test_sigkill_mid_run_loses_nothing(
    stack: Stack, client: CeleryClient, session_tmp: Path, unique: str
) -> None:
    import tests.support.async_tasks  # noqa: F401

    queue, key = f"aiokill-{unique}", f"kill-{unique}"
    env = _env(stack, TASKSYS_TEST_VISIBILITY_TIMEOUT="5")

    def argv(name: str) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "tests.support.short_visibility.app", "worker",
            "-l", "info", "-Q", queue, "-c", "50", "-P", "custom", "-n", f"{name}@%h",
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip

    first = ManagedProcess(f"aiokill-{unique}", argv(f"aiokill-{unique}"), env, session_tmp / "aio").start()
    first.wait_for_log(r"\bready\.", timeout=60)
    try:
        ids = client.submit_many(
            [{"task_name": "aio.nap", "args": [3.0, key], "queue": queue} for _ in range(30)]
        )
        wait_for(lambda: len(_events(client, key)) >= 30, timeout=30, what="30 tasks running")
        first.send(signal.SIGKILL)
        first.wait(30)
    finally:
        first.stop()
    second = ManagedProcess(
        f"aiokill2-{unique}", argv(f"aiokill2-{unique}"), env, session_tmp / "aio"
    ).start()
    try:
        second.wait_for_log(r"\bready\.", timeout=60)
        assert [client.get_result(i, timeout=60) for i in ids] == [3.0] * 30
    finally:
        second.stop()


def test_max_tasks_per_child_stops_the_worker_warmly(
    stack: Stack, client: CeleryClient, session_tmp: Path, unique: str
) -> None:
    import tests.support.async_tasks  # noqa: F401

    queue = f"aiorecycle-{unique}"
    proc = start_worker(
        f"aiorecycle-{unique}",
        _env(stack),
        session_tmp / "aio",
        queues=[queue],
        concurrency=5,
        pool="custom",
        extra=["--max-tasks-per-child=5"],
    )
    try:
        ids = client.submit_many([{"task_name": "aio.nap", "args": [0.1, f"r-{unique}"], "queue": queue}] * 5)
        assert [client.get_result(i, timeout=30) for i in ids] == [0.1] * 5
        assert proc.wait(30) == 0
    finally:
        proc.stop()
    assert "5 tasks done (max tasks per child 5); stopping this worker warmly" in proc.log()


def test_launcher_processes_starts_one_asyncio_worker_per_process(
    stack: Stack, client: CeleryClient, session_tmp: Path, unique: str
) -> None:
    import tests.support.async_tasks  # noqa: F401

    queue = f"aioproc-{unique}"
    argv = [sys.executable, str(REPO_ROOT / "scripts" / "run_celery_worker.py"), "--pool", "asyncio"]
    argv += ["-c", "10", "--processes", "2", "-Q", queue, "--without-mingle", "--without-gossip"]
    proc = ManagedProcess(f"aioproc-{unique}", argv, _env(stack), session_tmp / "aio").start()
    try:
        wait_for(lambda: len(re.findall(r"\bready\.", proc.log())) >= 2, timeout=60, what="two workers ready")
        probes = client.submit_many([{"task_name": "tests.hook_probe", "queue": queue}] * 20)
        assert all(client.get_result(i, timeout=30)["db"] == 1 for i in probes)
        proc.send(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.stop()
