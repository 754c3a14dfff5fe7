"""Worker lifecycle hooks, task-module inclusion and the worker launcher, on real processes."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import pytest

from pkg.celery_task import CeleryClient
from tests.conftest import Stack
from tests.support.procs import REPO_ROOT, ManagedProcess, service_env, start_worker, wait_for, worker_argv

pytestmark = pytest.mark.integration


def _started(hook_dir: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in hook_dir.glob("started-*")}


def _stopped(hook_dir: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in hook_dir.glob("stopped-*")}


def test_async_tasks_use_the_clients_the_startup_hook_made(stack: Stack, client: CeleryClient) -> None:
    results = [client.submit("tests.hook_probe") for _ in range(12)]
    probes = [client.get_result(r.id, timeout=30) for r in results]
    assert all(p["ping"] is True and p["db"] == 1 for p in probes)
    by_pid: dict[int, set[tuple[int, int]]] = {}
    for probe in probes:
        by_pid.setdefault(probe["pid"], set()).add((probe["redis_client"], probe["loop"]))
    # One client and one long-lived loop per process, reused by every task it runs.
    assert all(len(seen) == 1 for seen in by_pid.values()), by_pid
    assert set(by_pid) <= _started(stack.hook_dir)


@pytest.mark.parametrize("pool, concurrency", [("prefork", 2), ("solo", 1), ("threads", 2)])
def test_hooks_run_in_each_task_process_and_on_warm_shutdown(
    stack: Stack, client: CeleryClient, session_tmp: Path, unique: str, pool: str, concurrency: int
) -> None:
    hook_dir = session_tmp / f"hooks-{pool}-{unique}"
    hook_dir.mkdir()
    queue = f"hooks-{unique}"
    env = service_env(stack.db, database_url=stack.database_url, hook_dir=hook_dir)
    worker = start_worker(
        f"hooks-{unique}", env, session_tmp / "hooks", queues=[queue], concurrency=concurrency, pool=pool
    )
    try:
        probes = [client.submit("tests.hook_probe", queue=queue) for _ in range(8)]
        pids = {client.get_result(p.id, timeout=30)["pid"] for p in probes}
        started = _started(hook_dir)
        assert pids <= started
        if pool == "prefork":
            assert len(started) == concurrency and worker.pid not in started
        else:
            assert started == {worker.pid}
    finally:
        assert worker.stop() == 0
    assert _stopped(hook_dir) == started


def test_failing_startup_hook_stops_the_worker_with_a_clear_message(
    stack: Stack, session_tmp: Path, unique: str
) -> None:
    env = service_env(stack.db, database_url=stack.database_url, extra={"TASKSYS_TEST_FAIL_STARTUP": "1"})
    worker = ManagedProcess(
        f"failhook-{unique}",
        worker_argv(queues=[f"failhook-{unique}"], hostname=f"failhook-{unique}@%h"),
        env,
        session_tmp / "hooks",
    ).start()
    try:
        worker.wait(60)
    finally:
        worker.stop()
    log = worker.log()
    assert "worker startup hook _test_startup failed in process" in log
    assert "test startup hook was told to fail" in log


def test_missing_include_module_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        client = CeleryClient(
            "include-test",
            "redis://127.0.0.1:6379/15",
            include=["internal.tasks.celery.tasks", "internal.aps_tasks.tasks", "no_such_package.tasks"],
        )
    assert client.include == ("internal.tasks.celery.tasks",)
    assert "task module 'internal.aps_tasks.tasks' does not exist; skipping it" in caplog.text
    assert "task module 'no_such_package.tasks' does not exist; skipping it" in caplog.text


def test_include_module_that_raises_fails_loudly(stack: Stack, session_tmp: Path, unique: str) -> None:
    client = CeleryClient(
        "broken-include", "redis://127.0.0.1:6379/15", include=["tests.support.broken_tasks"]
    )
    assert client.include == ("tests.support.broken_tasks",)
    with pytest.raises(ImportError, match="broken on purpose"):
        client.load_tasks()

    env = service_env(
        stack.db,
        database_url=stack.database_url,
        extra={"CELERY_EXTRA_INCLUDE": "tests.support.tasks,tests.support.broken_tasks"},
    )
    worker = ManagedProcess(
        f"broken-{unique}",
        worker_argv(queues=[f"broken-{unique}"], hostname=f"broken-{unique}@%h"),
        env,
        session_tmp / "include",
    ).start()
    try:
        code = worker.wait(60)
    finally:
        worker.stop()
    assert code != 0
    assert "broken on purpose" in worker.log()


def test_launcher_reads_environment_and_flags_override_it(
    stack: Stack, client: CeleryClient, session_tmp: Path, unique: str
) -> None:
    queue = f"launcher-{unique}"
    env = service_env(
        stack.db,
        database_url=stack.database_url,
        extra={
            "CELERY_POOL": "threads",
            "CELERY_CONCURRENCY": "3",
            "CELERY_LOGLEVEL": "debug",
            "CELERY_QUEUES": f"unused-{unique}",
        },
    )
    argv = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "run_celery_worker.py"),
        "--queues",
        queue,
        "-n",
        f"launcher-{unique}@%h",
        "--without-mingle",
    ]
    worker = ManagedProcess(f"launcher-{unique}", argv, env, session_tmp / "launcher").start()
    try:
        worker.wait_for_log(r"\bready\.", timeout=60)
        assert client.get_result(client.submit("math.number_sum", (2, 3), queue=queue).id, timeout=30) == 5
        stats = wait_for(
            lambda: client.app.control.inspect(
                destination=[f"launcher-{unique}@{_host()}"], timeout=2
            ).stats(),
            timeout=20,
            what="worker stats",
        )
        (worker_stats,) = stats.values()
        assert worker_stats["pool"]["max-concurrency"] == 3
        assert worker_stats["pool"]["implementation"] == "celery.concurrency.thread:TaskPool"
        assert "DEBUG" in worker.log()  # CELERY_LOGLEVEL=debug reached the worker
        active = client.app.control.inspect(destination=[f"launcher-{unique}@{_host()}"], timeout=2)
        (queues,) = active.active_queues().values()
        assert [q["name"] for q in queues] == [queue]  # --queues overrode CELERY_QUEUES
    finally:
        worker.send(signal.SIGTERM)
        worker.stop()


def _host() -> str:
    import socket

    return socket.gethostname()
