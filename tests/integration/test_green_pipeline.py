"""The asyncio pool's pipeline for tracer writes (``worker/greenio.py``) on a real loop
thread and a real Redis: tracers parked in one loop turn share one round trip per
server, each resumes with its own replies, and a failed send leaves them to their own
calls."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import pytest
import redis
from celery import states
from greenlet import greenlet

from pkg.celery_task._loop import EventLoopThread
from pkg.celery_task.worker.greenio import GreenPipeline, deferred, pause, pipelined
from tests.support.services import RedisDb, private_redis

pytestmark = pytest.mark.integration


def _run_tracers(
    loop: asyncio.AbstractEventLoop, batch: GreenPipeline, bodies: list[Any], timeout: float = 10
) -> list[Any]:
    """Start one tracer greenlet per body in the same loop turn; their results."""
    done: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()
    results: list[Any] = [None] * len(bodies)
    left = [len(bodies)]

    def finish(index: int, body: Any) -> None:
        results[index] = body()
        left[0] -= 1
        if left[0] == 0:
            done.set_result(results)

    def start() -> None:
        for index, body in enumerate(bodies):
            tracer = greenlet(lambda i=index, b=body: finish(i, b))
            tracer.green_pipeline = batch
            tracer.switch()

    loop.call_soon_threadsafe(start)
    return done.result(timeout)


def test_tracers_of_one_turn_share_a_round_trip_and_get_their_own_replies(
    loop_thread: EventLoopThread, redis_db: RedisDb, unique: str
) -> None:
    client = redis.Redis.from_url(redis_db.url)
    flushed: list[int] = []
    batch = GreenPipeline(loop_thread.loop, after_flush=lambda: flushed.append(batch.flushes))

    def body(i: int) -> Any:
        first = pipelined(client, lambda pipe: pipe.incr(f"n-{unique}").set(f"k-{unique}-{i}", i))
        second = pipelined(client, lambda pipe: pipe.get(f"k-{unique}-{i}"))
        return first, second

    results = _run_tracers(loop_thread.loop, batch, [lambda i=i: body(i) for i in range(10)])
    assert sorted(r[0][0] for r in results) == list(range(1, 11))
    assert [r[0][1] for r in results] == [True] * 10
    assert [r[1] for r in results] == [[str(i).encode()] for i in range(10)]
    assert batch.flushes == 2 and batch.commands == 30  # 10 x (INCR, SET), then 10 x GET
    assert flushed == [1, 2]


def test_each_server_gets_its_own_pipeline_and_error_replies_come_back_as_values(
    loop_thread: EventLoopThread, redis_db: RedisDb, other_redis_db: RedisDb, unique: str
) -> None:
    one, two = redis.Redis.from_url(redis_db.url), redis.Redis.from_url(other_redis_db.url)
    batch = GreenPipeline(loop_thread.loop)
    results = _run_tracers(
        loop_thread.loop,
        batch,
        [
            lambda: pipelined(one, lambda pipe: pipe.set(f"a-{unique}", 1)),
            lambda: pipelined(two, lambda pipe: pipe.evalsha("0" * 40, 0)),
        ],
    )
    assert results[0] == [True]
    assert isinstance(results[1][0], redis.exceptions.NoScriptError)
    assert batch.flushes == 2
    assert one.get(f"a-{unique}") == b"1" and two.get(f"a-{unique}") is None


def test_a_failed_send_leaves_the_callers_to_their_own_calls(loop_thread: EventLoopThread) -> None:
    gone = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)  # nothing listens
    batch = GreenPipeline(loop_thread.loop)
    results = _run_tracers(loop_thread.loop, batch, [lambda: pipelined(gone, lambda pipe: pipe.ping())])
    assert results == [None]
    assert batch.flushes == 0


def test_outside_a_tracer_greenlet_nothing_is_pipelined(redis_db: RedisDb) -> None:
    client = redis.Redis.from_url(redis_db.url)
    assert pipelined(client, lambda pipe: pipe.ping()) is None


def test_the_hubs_deferred_writes_go_out_with_the_turn_and_fall_back_when_they_fail(
    loop_thread: EventLoopThread, redis_db: RedisDb, unique: str
) -> None:
    client = redis.Redis.from_url(redis_db.url)
    gone = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    batch = GreenPipeline(loop_thread.loop)
    fallbacks: list[str] = []
    done: concurrent.futures.Future[tuple[bool, bool]] = concurrent.futures.Future()

    def hub() -> None:
        queued = deferred(client, lambda pipe: pipe.set(f"acked-{unique}", 1), lambda: fallbacks.append("ok"))
        failed = deferred(gone, lambda pipe: pipe.ping(), lambda: fallbacks.append("gone"))
        done.set_result((queued, failed))

    def start() -> None:
        driver = greenlet(hub)
        driver.deferred_pipeline = batch
        driver.switch()

    loop_thread.loop.call_soon_threadsafe(start)
    assert done.result(10) == (True, True)  # the hub did not wait for the writes
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop_thread.loop).result(10)
    assert client.get(f"acked-{unique}") == b"1"
    assert fallbacks == ["gone"]
    assert deferred(client, lambda pipe: pipe.ping(), lambda: None) is False  # not the hub


async def _ticker(ticks: list[int]) -> None:
    """A loop task that counts its turns every 10 ms (it stops when the loop is held)."""
    while True:
        ticks.append(1)
        await asyncio.sleep(0.01)


def test_a_tracers_pause_lets_the_loop_run_other_tasks(loop_thread: EventLoopThread) -> None:
    """A retry backoff in a tracer (the store waiting out Redis's out-of-memory state)
    pauses that tracer only: other loop tasks go on meanwhile."""
    loop = loop_thread.loop
    ticks: list[int] = []
    during: list[int] = []
    ticking = asyncio.run_coroutine_threadsafe(_ticker(ticks), loop)
    batch = GreenPipeline(loop)

    def tracer_body() -> str:
        before = len(ticks)
        pause(0.3)
        during.append(len(ticks) - before)
        return "resumed"

    try:
        assert _run_tracers(loop, batch, [tracer_body]) == ["resumed"]
    finally:
        ticking.cancel()
    assert during[0] >= 3, during  # with a blocking sleep the ticker could not have run at all


def test_a_tracers_store_retry_through_a_redis_restart_lets_the_loop_run(
    loop_thread: EventLoopThread, unique: str
) -> None:
    """While Redis is down, Celery's retry of a result store backs off between tries;
    in a tracer greenlet only that tracer waits (other loop tasks go on), and the store
    lands once Redis is back."""
    from pkg.celery_task.worker.hooks import _use_worker_backend_retries
    from tests.reliability.conftest import client_for

    loop = loop_thread.loop
    ticks: list[int] = []
    during: list[int] = []
    with private_redis() as server:
        client = client_for(server.url)
        _use_worker_backend_retries(client.app)  # as in a worker: up to 60 tries, 1 s apart
        backend = client.app.backend
        backend.store_result(f"warm-{unique}", 1, states.SUCCESS)  # connected once
        server.stop()
        restart = threading.Timer(1.5, server.start)
        batch = GreenPipeline(loop)

        def tracer_body() -> str:
            before = len(ticks)
            backend.store_result(f"through-{unique}", 42, states.SUCCESS)
            during.append(len(ticks) - before)
            return "stored"

        ticking = asyncio.run_coroutine_threadsafe(_ticker(ticks), loop)
        restart.start()
        try:
            assert _run_tracers(loop, batch, [tracer_body], timeout=30) == ["stored"]
        finally:
            ticking.cancel()
            restart.join()
        assert backend.get_task_meta(f"through-{unique}")["result"] == 42
        client.close()
    # Redis was down for 1.5 s at least; a blocking backoff would have stopped the ticker.
    assert during[0] >= 50, during
