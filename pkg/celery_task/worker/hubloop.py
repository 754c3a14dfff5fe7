"""Celery's consumer event loop run on the asyncio pool's loop thread, not beside it.

On the asyncio pool the worker's main thread would run kombu's hub (Celery's
``asynloop``) while the task bodies run on the process loop in another thread. Every
small syscall either makes releases the GIL and the other takes it, so the loop pays
to get it back on every ``await`` (measured in ``bench/RESULTS.md``). Here the
consumer's loop function (Celery's ``Consumer.loop`` attribute, its extension point)
runs Celery's own ``asynloop`` unchanged in a greenlet on the loop thread: where the
hub would block in ``epoll_wait`` it polls without waiting and hands the thread back to
asyncio, which wakes it when the hub's poller has events or its timer is due. The main
thread only waits, and passes on what the loop raised (shutdown, connection errors).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

from celery.worker import loops, state
from greenlet import greenlet

from .._compat import hub_poll_fd
from .qos import ScriptedQoS

__all__ = ["HubOnLoop", "YieldingPoller", "run_hub_on_loop"]

#: Seconds the main thread waits between checks for a shutdown signal while the hub
#: runs on the loop thread (a signal's handler runs in the main thread only).
MAIN_WAKE_SECONDS = 0.2


class YieldingPoller:
    """The hub's poller, made to poll without waiting and to give the thread back to
    the asyncio loop on every pass (``yield_to(timeout)``: wait up to ``timeout``)."""

    def __init__(self, poller: Any, yield_to: Callable[[float], None]) -> None:
        self._poller = poller
        self.yield_to = yield_to

    def poll(self, timeout: float | None) -> Any:
        """Events ready now; when there are none, first let the loop wait for them."""
        events = self._poller.poll(0)
        if events or not timeout:
            self.yield_to(0.0)
            return events
        self.yield_to(float(timeout))
        return self._poller.poll(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._poller, name)


class HubOnLoop:
    """Drives one run of ``asynloop`` in a greenlet on ``loop``; :meth:`run` blocks the
    calling (main) thread until it ends and re-raises what it raised."""

    def __init__(self, loop: asyncio.AbstractEventLoop, hub: Any, pipeline: Any = None) -> None:
        self.loop = loop
        self.hub = hub
        #: Where the hub's Redis writes (acks) go out with the loop turn's tracer writes.
        self.pipeline = pipeline
        self._stop: BaseException | None = None
        self._driver: greenlet | None = None
        self._waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        """On the loop thread: end the hub's wait now. Work that frees a slot (a task
        traced on the loop) queues hub callbacks from the hub's own thread, which kombu
        does not count as a reason to wake its poller."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def yield_to(self, timeout: float) -> None:
        """In the hub's greenlet: let the loop run (waiting up to ``timeout`` for the
        hub's events), then go on, or unwind if the main thread was interrupted."""
        if self._driver is not None:
            self._driver.switch(timeout)
        if self._stop is not None:  # the main thread was interrupted: unwind asynloop
            raise self._stop

    async def _drive(self, run: Callable[[], Any]) -> tuple[bool, Any]:
        """Run ``run`` in a greenlet; between its polls, wait on the loop. Returns
        ``(ok, value or exception)``: a ``SystemExit`` (Celery's shutdown) must not
        escape an asyncio task, which would stop the loop thread itself."""
        self._driver = greenlet.getcurrent()
        child = greenlet(run)
        if self.pipeline is not None:
            child.deferred_pipeline = self.pipeline
        try:
            wait = child.switch()
            while not child.dead:
                if wait:
                    await self._readable(hub_poll_fd(self.hub), wait)
                else:
                    await asyncio.sleep(0)
                wait = child.switch()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread as is
            return False, exc
        return True, wait

    async def _readable(self, fd: int, timeout: float) -> None:
        """Wait until ``fd`` (the hub's epoll set) is readable, ``timeout`` passes or
        :meth:`wake` is called."""
        loop = self.loop
        waiter = self._waiter = loop.create_future()
        loop.add_reader(fd, self.wake)
        timer = loop.call_later(timeout, self.wake)
        try:
            await waiter
        finally:
            self._waiter = None
            timer.cancel()
            loop.remove_reader(fd)

    def run(self, run: Callable[[], Any]) -> Any:
        """Run ``run`` on the loop thread; wait here, waking the hub for shutdown signals."""
        future = asyncio.run_coroutine_threadsafe(self._drive(run), self.loop)
        try:
            while True:
                try:
                    ok, value = future.result(MAIN_WAKE_SECONDS)
                    break
                except concurrent.futures.TimeoutError:
                    if state.should_stop is not None or state.should_terminate is not None:
                        self.hub.call_soon(_nothing)  # wakes the hub's poller
        except BaseException as exc:
            self._stop = exc
            self.hub.call_soon(_nothing)
            ok, value = future.result()
            if ok:
                raise
        if not ok:
            raise value
        return value


def _nothing() -> None:
    """A hub callback whose only effect is to wake the hub's poller."""


def run_hub_on_loop(pool: Any) -> Callable[..., Any]:
    """A ``Consumer.loop`` function: Celery's ``asynloop`` with its hub on the loop of
    ``pool`` (the asyncio pool; its loop is started by then)."""

    def hub_loop(obj: Any, connection: Any, consumer: Any, blueprint: Any, hub: Any, *rest: Any) -> Any:
        driver = HubOnLoop(pool.loop, hub, getattr(pool, "green_pipeline", None))
        poller = hub.poller
        hub.poller = YieldingPoller(poller, driver.yield_to)
        pool.wake_hub = driver.wake
        qos = getattr(getattr(consumer, "channel", None), "qos", None)
        window = getattr(pool, "fetch_window", None)
        gated = qos if window is not None and isinstance(qos, ScriptedQoS) else None
        if gated is not None:
            gated.fetch_window = window
        try:
            return driver.run(lambda: loops.asynloop(obj, connection, consumer, blueprint, hub, *rest))
        finally:
            pool.wake_hub = None
            if gated is not None:
                gated.fetch_window = None
            if window is not None and not pool.loop.is_closed():
                pool.loop.call_soon_threadsafe(window.stop)
            if isinstance(hub.poller, YieldingPoller):
                hub.poller = poller

    return hub_loop
