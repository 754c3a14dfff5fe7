"""Global rate and concurrency limits across two separate ``celery worker`` commands
(``-c 4`` each), measured from the start and end times the tasks record themselves."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pkg.celery_task import CeleryClient
from pkg.celery_task._flow import THROTTLED
from tests.conftest import Stack
from tests.support.procs import ManagedProcess, service_env, wait_for, worker_argv

pytestmark = pytest.mark.integration

VISIBILITY_TIMEOUT = 5
INCLUDE = "tests.support.tasks,tests.support.flow_tasks"


@dataclass
class Workers:
    queue: str
    procs: list[ManagedProcess]
    env: dict[str, str]
    logs: Path


def _worker(name: str, queue: str, env: dict[str, str], logs: Path) -> ManagedProcess:
    argv = worker_argv(queues=[queue], hostname=f"{name}@%h", concurrency=4)
    argv[argv.index("-A") + 1] = "tests.support.short_visibility.app"
    return ManagedProcess(name, argv, env, logs).start()


@pytest.fixture(scope="module")
def workers(stack: Stack, session_tmp: Path) -> Iterator[Workers]:
    """Two workers of four processes each on one queue, visibility timeout 5 s."""
    import tests.support.flow_tasks  # noqa: F401  (registers the tasks for the client's checks)

    queue = f"flow-{time.time_ns()}"
    env = service_env(
        stack.db,
        database_url=stack.database_url,
        extra={"CELERY_EXTRA_INCLUDE": INCLUDE, "TASKSYS_TEST_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT)},
    )
    logs = session_tmp / "flow"
    procs = [_worker(f"flow-{n}-{queue}", queue, env, logs) for n in ("a", "b")]
    try:
        for proc in procs:
            proc.wait_for_log(r"\bready\.", timeout=60)
        yield Workers(queue, procs, env, logs)
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture(autouse=True)
def _fresh_limits(client: CeleryClient) -> Iterator[None]:
    from tests.support.tasks import test_redis

    def clear() -> None:
        keys = list(test_redis().scan_iter("tasksys:flow:*"))
        if keys:
            test_redis().delete(*keys)

    clear()
    yield
    clear()


def _records(key: str) -> list[dict[str, float]]:
    from tests.support.tasks import test_redis

    return [json.loads(raw) for raw in test_redis().lrange(key, 0, -1)]


#: Starts are read where the task body begins, a moment after the pool started the task
#: (the time the gate's log holds); on a loaded machine that moment varies by up to this
#: much, so limits are checked on windows this much shorter than theirs.
START_JITTER = 0.1


def _max_in_window(starts: list[float], window: float) -> int:
    """The most starts any half-open window of ``window`` seconds holds."""
    starts = sorted(starts)
    best, j = 0, 0
    for i, start in enumerate(starts):
        while starts[j] <= start - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def _max_overlap(records: list[dict[str, float]]) -> int:
    edges = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    running = best = 0
    for _, step in edges:
        running += step
        best = max(best, running)
    return best


def test_global_rate_limit_holds_across_two_workers(
    workers: Workers, client: CeleryClient, unique: str
) -> None:
    key, free = f"rated-{unique}", f"free-{unique}"
    began = time.time()
    ids = [client.submit("flow.rated", [key], queue=workers.queue).id for _ in range(60)]
    # Unlimited tasks sent after them on the same queue are not held behind them.
    free_ids = [client.submit("flow.free", [free], queue=workers.queue).id for _ in range(10)]
    for task_id in ids + free_ids:
        client.get_result(task_id, timeout=60)
    starts = sorted(r["start"] for r in _records(key))
    assert len(starts) == 60
    print(
        f"global 10/s: most starts in a 1 s window {_max_in_window(starts, 1.0)}, "
        f"60 in {starts[-1] - began:.2f} s"
    )
    assert _max_in_window(starts, 1.0 - START_JITTER) <= 10, starts
    assert 5.0 <= starts[-1] - began <= 12.0, starts[-1] - began
    assert {client.get_status(task_id) for task_id in ids} == {"SUCCESS"}
    assert max(r["start"] for r in _records(free)) < starts[-1] - 2.0
    assert {row["task"]: row["throttled"] for row in client.limits()}["flow.rated"] > 0


def test_each_flow_key_gets_its_own_rate(workers: Workers, client: CeleryClient, unique: str) -> None:
    key = f"per-key-{unique}"
    ids = [
        client.submit("flow.per_key_rated", [key, flow_key], queue=workers.queue, flow_key=flow_key).id
        for _ in range(15)
        for flow_key in ("tenant-a", "tenant-b")
    ]
    for task_id in ids:
        client.get_result(task_id, timeout=60)
    records = _records(key)
    by_key = {k: [r["start"] for r in records if r["flow_key"] == k] for k in ("tenant-a", "tenant-b")}
    for flow_key, starts in by_key.items():
        print(f"per key 5/s: {flow_key} most starts in a 1 s window {_max_in_window(starts, 1.0)}")
        assert len(starts) == 15
        assert _max_in_window(starts, 1.0 - START_JITTER) <= 5, starts
    # Together they ran twice as fast as one key alone could.
    assert _max_in_window([r["start"] for r in records], 1.0) > 5


def test_concurrency_limit_across_workers(workers: Workers, client: CeleryClient, unique: str) -> None:
    key = f"limited-{unique}"
    ids = [client.submit("flow.limited", [key, 0.4], queue=workers.queue).id for _ in range(12)]
    for task_id in ids:
        client.get_result(task_id, timeout=60)
    records = _records(key)
    assert len(records) == 12
    print(f"concurrency_limit=3: most running at once {_max_overlap(records)}")
    assert _max_overlap(records) == 3, records
    from tests.support.tasks import test_redis

    # Every slot was given back with its task's acknowledgement (none left to expire).
    wait_for(
        lambda: test_redis().zcard("tasksys:flow:slots:g:flow.limited") == 0, timeout=5, what="slots freed"
    )


def test_one_run_per_key_at_a_time(workers: Workers, client: CeleryClient, unique: str) -> None:
    key = f"one-{unique}"
    ids = [
        client.submit("flow.one_per_key", [key, 0.3, flow_key], queue=workers.queue, flow_key=flow_key).id
        for _ in range(5)
        for flow_key in ("a", "b")
    ]
    for task_id in ids:
        client.get_result(task_id, timeout=60)
    records = _records(key)
    for flow_key in ("a", "b"):
        runs = [r for r in records if r["flow_key"] == flow_key]
        assert len(runs) == 5
        print(f"concurrency_limit_per_key=1: key {flow_key} most running at once {_max_overlap(runs)}")
        assert _max_overlap(runs) == 1, runs
    assert _max_overlap(records) == 2, "the two keys ran side by side"


def test_limits_change_at_runtime_and_show_throttled(
    workers: Workers, client: CeleryClient, unique: str
) -> None:
    key = f"runtime-{unique}"
    client.set_limits("flow.free", concurrency_limit=1)
    try:
        rows = {row["task"]: row for row in client.limits()}
        assert rows["flow.free"]["source"] == "runtime" and rows["flow.free"]["concurrency_limit"] == 1
        time.sleep(1.5)  # workers read the overrides at most a second old
        first = client.submit("flow.free", [key, 2.0], queue=workers.queue)
        wait_for(lambda: client.get_status(first.id) == "STARTED", timeout=10, what="the first run")
        second = client.submit("flow.free", [key, 0.0], queue=workers.queue)
        wait_for(lambda: client.get_status(second.id) == THROTTLED, timeout=10, what="second throttled")
        client.get_result(second.id, timeout=30)
        records = sorted(_records(key), key=lambda r: r["start"])
        assert records[1]["start"] >= records[0]["end"] - 0.01
    finally:
        client.reset_limits("flow.free")
    assert "flow.free" not in {row["task"] for row in client.limits()}


def test_a_killed_worker_frees_its_slot_within_the_visibility_timeout(
    workers: Workers, client: CeleryClient, unique: str
) -> None:
    key = f"killed-{unique}"
    queue = f"{workers.queue}-victim"
    victim = _worker(f"flow-victim-{unique}", queue, workers.env, workers.logs)
    try:
        victim.wait_for_log(r"\bready\.", timeout=60)
        client.submit("flow.one_per_key", [key, 60, "solo"], queue=queue, flow_key="solo")
        wait_for(lambda: "flow.one_per_key" in victim.log_path.read_text(), timeout=15, what="the long run")
        time.sleep(1)
        victim.kill()
        killed_at = time.time()
        follower = client.submit("flow.one_per_key", [key, 0, "solo"], queue=workers.queue, flow_key="solo")
        client.get_result(follower.id, timeout=VISIBILITY_TIMEOUT + 15)
        started = [r["start"] for r in _records(key)]
        print(
            f"slot of a killed worker free after {started[0] - killed_at:.2f} s "
            f"(visibility {VISIBILITY_TIMEOUT} s)"
        )
        assert len(started) == 1 and started[0] - killed_at <= VISIBILITY_TIMEOUT + 3, started
    finally:
        victim.stop()


def test_concurrency_limit_holds_on_the_asyncio_pool(
    workers: Workers, client: CeleryClient, unique: str
) -> None:
    from pkg.celery_task.worker.pool import POOL_PATH

    key = f"aio-limited-{unique}"
    queue = f"{workers.queue}-aio"
    argv = worker_argv(queues=[queue], hostname=f"flow-aio-{unique}@%h", concurrency=20, pool="custom")
    env = {**workers.env, "CELERY_CUSTOM_WORKER_POOL": POOL_PATH}
    proc = ManagedProcess(f"flow-aio-{unique}", argv, env, workers.logs).start()
    try:
        proc.wait_for_log(r"\bready\.", timeout=60)
        ids = [client.submit("flow.limited", [key, 0.3], queue=queue).id for _ in range(9)]
        for task_id in ids:
            client.get_result(task_id, timeout=60)
        records = _records(key)
        assert len(records) == 9
        assert _max_overlap(records) == 3, records
    finally:
        proc.stop()
