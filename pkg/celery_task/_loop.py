"""One long-lived asyncio event loop per worker process, run in a daemon thread.

Async hooks and ``async def`` task bodies all run on it, so connection pools created by
the startup hook stay usable in every task (a throwaway ``asyncio.run`` loop would
leave them bound to a closed loop). A thread, rather than the task's own thread, lets
solo, threads and prefork pools share the same code and lets time limits interrupt
the waiting thread while the coroutine is cancelled cleanly on its loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from greenlet import getcurrent

__all__ = ["EventLoopThread", "process_loop", "run_coroutine", "run_task_coroutine", "task_coroutine_runner"]

T = TypeVar("T")


class EventLoopThread:
    """An event loop running forever in a daemon thread until :meth:`stop`."""

    def __init__(self, name: str = "tasksys-event-loop") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        """True while the loop thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop, starting it on first use."""
        self.start()
        loop = self._loop
        if loop is None:
            raise RuntimeError("event loop thread was stopped while starting")
        return loop

    def start(self) -> None:
        """Start the loop thread (idempotent)."""
        with self._lock:
            if self.running:
                return
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def _run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=_run, name=self._name, daemon=True)
            thread.start()
            ready.wait()
            self._loop, self._thread = loop, thread

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block until it returns; cancel it if the
        waiting thread is interrupted (e.g. by a soft time limit) or times out."""
        if self._thread is threading.current_thread():
            coro.close()
            raise RuntimeError("EventLoopThread.run() called from its own loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel pending tasks, stop the loop and close it; safe to call twice."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if thread.is_alive():

            async def _cancel_all() -> None:
                current = asyncio.current_task()
                tasks = [t for t in asyncio.all_tasks() if t is not current]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await loop.shutdown_asyncgens()

            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                asyncio.run_coroutine_threadsafe(_cancel_all(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        if not loop.is_running():
            loop.close()


_process_loop: tuple[int, EventLoopThread] | None = None
_process_loop_lock = threading.Lock()


def process_loop() -> EventLoopThread:
    """The event loop thread of the current process (a new one after ``fork``)."""
    global _process_loop
    with _process_loop_lock:
        if _process_loop is None or _process_loop[0] != os.getpid():
            _process_loop = (os.getpid(), EventLoopThread())
        return _process_loop[1]


def run_coroutine(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on this process's long-lived loop and return its result."""
    return process_loop().run(coro, timeout)


#: Set by a pool on the threads it runs tasks in (the asyncio pool): how a task body's
#: coroutine is run there instead of :func:`run_coroutine`.
_task_runner = threading.local()


def task_coroutine_runner(runner: Callable[[Coroutine[Any, Any, Any]], Any] | None) -> None:
    """Make ``async def`` task bodies started from this thread run through ``runner``."""
    _task_runner.run = runner


def run_task_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run a task body's coroutine: through the pool runner of this greenlet or thread
    if one is set, else on the process's long-lived loop."""
    runner: Callable[[Coroutine[Any, Any, T]], T] | None = getattr(getcurrent(), "task_runner", None)
    if runner is None:
        runner = getattr(_task_runner, "run", None)
    if runner is None:
        return run_coroutine(coro)
    return runner(coro)
