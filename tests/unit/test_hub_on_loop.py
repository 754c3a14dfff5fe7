"""Celery's consumer loop driven on an asyncio loop thread (``worker/hubloop.py``),
with a real kombu hub and a real loop thread: where it runs, how it waits, what the
main thread gets back."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from kombu.asynchronous import Hub

from pkg.celery_task._loop import EventLoopThread
from pkg.celery_task.worker.hubloop import HubOnLoop, YieldingPoller


@pytest.fixture()
def hub() -> Iterator[Hub]:
    hub = Hub()
    yield hub
    hub.close()


def _driven(loop_thread: EventLoopThread, hub: Hub) -> HubOnLoop:
    driver = HubOnLoop(loop_thread.loop, hub)
    hub.poller = YieldingPoller(hub.poller, driver.yield_to)
    return driver


def test_the_hub_runs_on_the_loop_thread_and_wakes_for_a_readable_socket(
    loop_thread: EventLoopThread, hub: Hub
) -> None:
    driver = _driven(loop_thread, hub)
    left, right = socket.socketpair()
    seen: list[str] = []
    hub.add_reader(left.fileno(), lambda: seen.append(left.recv(10).decode()))
    threading.Timer(0.3, right.send, (b"ping",)).start()

    def consume() -> str:
        began = time.monotonic()
        while not seen and time.monotonic() - began < 20:
            events = hub.poller.poll(30)  # the loop waits for the socket, not 30 s
            for fd, _ in events:
                callback, args = hub.readers[fd]
                callback(*args)
        return threading.current_thread().name

    try:
        assert driver.run(consume) == "test-loop"
        assert seen == ["ping"]
    finally:
        left.close()
        right.close()


def test_other_work_on_the_loop_goes_on_while_the_hub_waits(loop_thread: EventLoopThread, hub: Hub) -> None:
    driver = _driven(loop_thread, hub)
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(time.monotonic())
        if len(ticks) < 5:
            loop_thread.loop.call_later(0.05, tick)
        else:
            driver.wake()  # what a finished task does: the hub looks again at once

    def wait_long() -> int:
        loop_thread.loop.call_soon(tick)
        hub.poller.poll(30)
        return len(ticks)

    began = time.monotonic()
    assert driver.run(wait_long) == 5
    assert time.monotonic() - began < 20, "the wake did not end the hub's wait"


def test_a_shutdown_raised_in_the_hub_reaches_the_main_thread_and_the_loop_lives_on(
    loop_thread: EventLoopThread, hub: Hub
) -> None:
    driver = _driven(loop_thread, hub)

    def shut_down() -> None:
        hub.poller.poll(0)
        raise SystemExit(3)  # Celery's WorkerShutdown is a SystemExit

    with pytest.raises(SystemExit) as raised:
        driver.run(shut_down)
    assert raised.value.code == 3
    assert loop_thread.running

    async def still_there() -> str:
        return "alive"

    assert loop_thread.run(still_there(), timeout=5) == "alive"


def test_an_interrupted_main_thread_unwinds_the_hub_with_the_same_error(
    loop_thread: EventLoopThread, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt in the waiting main thread is raised inside the hub at its
    next poll, so Celery's loop unwinds before the main thread goes on."""
    driver = _driven(loop_thread, hub)
    unwound: list[str] = []
    started = threading.Event()

    def loop_forever() -> None:
        try:
            started.set()
            while True:
                hub.poller.poll(0.05)
        finally:
            unwound.append(threading.current_thread().name)

    import concurrent.futures

    real_result = concurrent.futures.Future.result
    calls = [0]

    def interrupted_result(self: concurrent.futures.Future[object], timeout: float | None = None) -> object:
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real_result(self, timeout)

    monkeypatch.setattr(concurrent.futures.Future, "result", interrupted_result)
    with pytest.raises(KeyboardInterrupt):
        driver.run(loop_forever)
    assert started.is_set()
    assert unwound == ["test-loop"]
