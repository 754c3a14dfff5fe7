"""An asyncio pool for ``celery worker``: many ``async def`` tasks at once per process.

Everything runs on the process's long-lived loop (:mod:`.._loop`, the one the startup
hooks opened their clients on): the consumer's hub (:mod:`.hubloop`), and for an
``async def`` task Celery's own tracer (states, result store, events, acks) in a
greenlet of the loop thread, which awaits the body as a loop task and gives the thread
back to the loop meanwhile; its result store and ack go out pipelined with the other
writes of the loop turn (:mod:`.greenio`). One thread doing all the work costs no
thread hand-offs and no fight for the GIL. Sync tasks run in a bounded executor
(``--concurrency`` threads), never on the loop; if the body of a task thought sync
turns out to be a coroutine, its thread hands it to the loop and waits. Where the hub
does not run on the loop (a consumer other than ours), every task takes the executor.

On the loop each body is driven by :class:`_Driven`, which turns the pool's
cancellation into what the task should see: ``SoftTimeLimitExceeded`` raised at the
body's current ``await`` (soft limit), ``CancelledError`` (hard limit, revoke with
terminate, shutdown). A watchdog thread logs a body that blocks the loop, with its
task name. ``--max-tasks-per-child`` / ``--max-memory-per-child`` make the worker
process stop warmly for its supervisor to start a fresh one (there is no child to
replace). Start it with ``--pool custom`` and ``CELERY_CUSTOM_WORKER_POOL`` set to
:data:`POOL_PATH`, or ``scripts/run_celery_worker.py --pool asyncio``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError
from celery.concurrency.base import BasePool
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from greenlet import getcurrent, greenlet

from .._compat import base_pool_info
from .._loop import process_loop, task_coroutine_runner
from .._options import options_of
from .backend import ResultStoreGaveUp
from .greenio import GreenPipeline, resume
from .window import FetchWindow

__all__ = ["POOL_PATH", "AsyncioPool", "BLOCKED_LOOP_SECONDS"]

logger = logging.getLogger(__name__)

#: What ``CELERY_CUSTOM_WORKER_POOL`` names for ``celery worker --pool custom``.
POOL_PATH = "pkg.celery_task.worker.pool:AsyncioPool"
#: A loop that has not run a callback for this long is reported as blocked.
BLOCKED_LOOP_SECONDS = 0.5


def _lost(exc: BaseException) -> ExceptionInfo:
    """``exc`` reported as Celery's ``WorkerLostError``: the request then requeues its
    message (``task_reject_on_worker_lost``), as when a prefork child dies."""
    try:
        raise WorkerLostError(str(exc)) from exc
    except WorkerLostError:
        return ExceptionInfo()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Stopped(BaseException):
    """The pool stopped this job (revoke with terminate, shutdown): the tracer lets it
    through (it is not an ``Exception``), so nothing is stored and nothing acked here."""


class _Driven:
    """Awaits ``coro`` step by step, so a cancellation the pool meant as the soft time
    limit reaches the body as ``SoftTimeLimitExceeded`` at its current ``await``."""

    def __init__(self, coro: Coroutine[Any, Any, Any], job: _Job) -> None:
        self._coro = coro
        self._job = job

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        send: Any = None
        throw: BaseException | None = None
        while True:
            try:
                yielded = coro.send(send) if throw is None else coro.throw(throw)
            except StopIteration as stop:
                return stop.value
            send, throw = None, None
            try:
                send = yield yielded
            except asyncio.CancelledError as exc:
                throw = exc
                if self._job.soft_pending:
                    self._job.soft_pending = False
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                    throw = SoftTimeLimitExceeded(f"soft time limit ({self._job.soft_timeout} s) exceeded")
            except BaseException as exc:
                throw = exc


class _Job:
    """One accepted message: its thread, its coroutine on the loop (if any), its limits."""

    def __init__(
        self, pool: AsyncioPool, name: str, soft_timeout: float | None, timeout: float | None
    ) -> None:
        self.pool = pool
        self.name = name
        self.soft_timeout = soft_timeout
        self.timeout = timeout
        self.future: concurrent.futures.Future[Any] | None = None
        self.task: asyncio.Task[Any] | None = None
        self.soft_pending = False
        self.hard_expired = False
        self.stopped = False
        self._timers: list[asyncio.TimerHandle] = []

    # ApplyResult protocol used by Celery's Request -----------------------------------
    def terminate(self, signum: int | None = None) -> None:
        """Cancel the running coroutine (``revoke(terminate=True)``, shutdown)."""
        self.stopped = True
        self._cancel()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the job's thread to finish."""
        if self.future is not None:
            concurrent.futures.wait([self.future], timeout)

    def get(self, timeout: float | None = None) -> Any:
        """The job thread's return value."""
        return None if self.future is None else self.future.result(timeout)

    # --------------------------------------------------------------------------------
    def _cancel(self) -> None:
        task = self.task
        if task is not None:
            task.get_loop().call_soon_threadsafe(task.cancel)

    def run_coroutine(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Await ``coro`` on the process loop under this job's limits; block this thread."""
        loop = self.pool.loop
        future = asyncio.run_coroutine_threadsafe(self._body(coro), loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self.hard_expired:
                raise TimeLimitExceeded(self.timeout) from None
            raise _Stopped from None
        finally:
            loop.call_soon_threadsafe(self._clear_timers)

    def run_coroutine_green(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Await ``coro`` as a task of the loop this greenlet runs on; switch back to the
        loop until it is done (the tracer's greenlet waits, the loop thread does not)."""
        me = getcurrent()
        task = self.pool.loop.create_task(self._body(coro))
        task.add_done_callback(lambda _: self.pool.resume_green(me))
        try:
            me.parent.switch()
            return task.result()
        except asyncio.CancelledError:
            if self.hard_expired:
                raise TimeLimitExceeded(self.timeout) from None
            raise _Stopped from None
        finally:
            self._clear_timers()

    async def _body(self, coro: Coroutine[Any, Any, Any]) -> Any:
        self.task = asyncio.current_task()
        if self.stopped:
            coro.close()
            raise asyncio.CancelledError
        self.pool.on_loop_task(self, add=True)
        loop = asyncio.get_running_loop()
        if self.soft_timeout:
            self._timers.append(loop.call_later(self.soft_timeout, self._soft_limit))
        if self.timeout:
            self._timers.append(loop.call_later(self.timeout, self._hard_limit))
        try:
            return await _Driven(coro, self)
        finally:
            self.pool.on_loop_task(self, add=False)

    def _soft_limit(self) -> None:
        if self.task is not None and not self.task.done():
            self.soft_pending = True
            self.task.cancel()

    def _hard_limit(self) -> None:
        if self.task is not None and not self.task.done():
            logger.error("task %s: hard time limit (%s s) exceeded; cancelling it", self.name, self.timeout)
            self.hard_expired = True
            self.task.cancel()

    def _clear_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()


class AsyncioPool(BasePool):  # type: ignore[misc]
    """Celery pool: up to ``limit`` tasks at once, ``async def`` bodies on one loop."""

    body_can_be_buffer = True
    #: The consumer runs its hub on this pool's loop (:mod:`.hubloop`).
    hub_on_loop = True
    signal_safe = False
    is_green = False
    task_join_will_block = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loop_thread = process_loop()
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.jobs: set[_Job] = set()
        self._on_loop: dict[asyncio.Task[Any], _Job] = {}
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None
        self._closing = threading.Event()
        self._done_count = 0
        self._recycling = False
        self.max_tasks = self.options.get("maxtasksperchild") or 0
        #: Set while the consumer's hub runs on the loop (:mod:`.hubloop`): ends its wait.
        self.wake_hub: Callable[[], None] | None = None
        #: Jobs traced in a greenlet on the loop (``async def``) and in the executor.
        self.traced_on_loop = 0
        self.traced_in_threads = 0
        #: Result stores and acks of the tracers on the loop, one pipeline per turn.
        self.green_pipeline: GreenPipeline | None = None
        #: How many messages the hub on the loop may take now (None: the prefetch limit).
        self.fetch_window: FetchWindow | None = None
        self.max_memory_kb = self.options.get("max_memory_per_child") or 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The process's long-lived event loop."""
        return self.loop_thread.loop

    def on_start(self) -> None:
        """Start the loop (if the hooks have not), the executor and the watchdog."""
        self.loop_thread.start()
        self.green_pipeline = GreenPipeline(self.loop, after_flush=self._wake_hub)
        target = options_of(self.app).asyncio_lag_target if self.app is not None else 0.0
        if target > 0:
            self.fetch_window = FetchWindow(
                self.loop, int(self.limit), target, lambda: len(self.jobs), on_room=self._wake_hub
            )
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.limit, thread_name_prefix="tasksys-aio"
        )
        self._closing.clear()
        self._watchdog = threading.Thread(target=self._watch_loop, name="tasksys-aio-watchdog", daemon=True)
        self._watchdog.start()

    def on_apply(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        soft_timeout: float | None = None,
        timeout: float | None = None,
        **_: Any,
    ) -> _Job:
        """Run ``target`` (Celery's tracer) in the executor; return the job handle."""
        if self.executor is None:
            raise RuntimeError("the asyncio pool is not started")
        name = str(args[0]) if args else "?"
        if args and len(args) > 1:
            name = f"{args[0]}[{args[1]}]"
        job = _Job(self, name, soft_timeout, timeout)
        with self._lock:
            self.jobs.add(job)
        run = (target, args or (), kwargs or {}, callback, accept_callback)
        if self.wake_hub is not None and self._is_async(args):
            self.traced_on_loop += 1
            # From the hub on the loop thread no wake-up write is needed (one syscall less).
            schedule = self.loop.call_soon if _running_loop() is self.loop else self.loop.call_soon_threadsafe
            schedule(self._start_green, job, run)
        else:
            self.traced_in_threads += 1
            job.future = self.executor.submit(self._run_job, job, *run)
        return job

    def resume_green(self, tracer: greenlet) -> None:
        """On the loop: let a waiting tracer finish (store, ack), then wake the hub,
        which can fetch again now that a slot is free."""
        resume(tracer)
        self._wake_hub()

    def _wake_hub(self) -> None:
        if self.wake_hub is not None:
            self.wake_hub()

    def _is_async(self, args: tuple[Any, ...] | None) -> bool:
        """True when the task named in the tracer's ``args`` has an ``async def`` body."""
        task = self.app.tasks.get(args[0]) if self.app is not None and args else None
        run = getattr(task, "run", None)
        return run is not None and inspect.iscoroutinefunction(inspect.unwrap(run))

    def _start_green(self, job: _Job, run: tuple[Any, ...]) -> None:
        """On the loop: trace an ``async def`` task in a greenlet of the loop thread,
        so a task costs no thread hand-off (sync tasks stay in the executor)."""
        tracer = greenlet(self._run_job)
        tracer.task_runner = job.run_coroutine_green
        tracer.green_pipeline = self.green_pipeline
        resume(tracer, job, *run, green=True)

    def _run_job(
        self,
        job: _Job,
        target: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        callback: Callable[..., Any] | None,
        accept_callback: Callable[..., Any] | None,
        green: bool = False,
    ) -> None:
        if not green:
            task_coroutine_runner(job.run_coroutine)
        try:
            if job.stopped:
                return
            if accept_callback is not None:
                accept_callback(os.getpid(), time.monotonic())
            try:
                ret = target(*args, **kwargs)
            except _Stopped:
                logger.info("task %s stopped by the pool; its message is not acknowledged here", job.name)
                return
            except ResultStoreGaveUp as exc:
                logger.critical("task %s: %s", job.name, exc)
                ret = (1, _lost(exc), 0.0)
            except Exception:
                logger.exception("task %s: the tracer raised", job.name)
                ret = (1, ExceptionInfo(), 0.0)
            if callback is not None:
                try:
                    callback(ret)
                except ResultStoreGaveUp as exc:  # its failure state could not be stored either
                    logger.critical("task %s: %s", job.name, exc)
        finally:
            if not green:
                task_coroutine_runner(None)
            with self._lock:
                self.jobs.discard(job)
                self._done_count += 1
            self._maybe_recycle()

    def on_loop_task(self, job: _Job, *, add: bool) -> None:
        """Track which job each loop task belongs to (for the blocked-loop report)."""
        if job.task is None:
            return
        if add:
            self._on_loop[job.task] = job
        else:
            self._on_loop.pop(job.task, None)

    def _watch_loop(self) -> None:
        """Every 0.1 s, check the loop ran a callback recently; name the task blocking it."""
        beat = [time.monotonic()]
        reported: set[int] = set()

        def _tick() -> None:
            beat[0] = time.monotonic()

        while not self._closing.wait(0.1):
            try:
                self.loop.call_soon_threadsafe(_tick)
            except RuntimeError:
                return
            lag = time.monotonic() - beat[0]
            if lag < BLOCKED_LOOP_SECONDS:
                reported.clear()
                continue
            task = asyncio.current_task(self.loop)
            job = self._on_loop.get(task) if task is not None else None
            if id(task) in reported:
                continue
            reported.add(id(task))
            logger.warning(
                "event loop blocked for %.1f s by task %s: a blocking call inside an async def "
                "body stops every other task of this process; await it or move it to a thread",
                lag,
                job.name if job is not None else "(no task; a hook or library callback)",
            )

    def _maybe_recycle(self) -> None:
        if self._recycling:
            return
        reason = None
        if self.max_tasks and self._done_count >= self.max_tasks:
            reason = f"{self._done_count} tasks done (max tasks per child {self.max_tasks})"
        elif self.max_memory_kb:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if rss > self.max_memory_kb:
                reason = f"peak RSS {rss} KiB over max memory per child {self.max_memory_kb} KiB"
        if reason is None:
            return
        self._recycling = True
        logger.warning("asyncio pool: %s; stopping this worker warmly for its supervisor to restart", reason)
        os.kill(os.getpid(), signal.SIGTERM)

    def _running(self) -> list[_Job]:
        with self._lock:
            return list(self.jobs)

    def on_stop(self) -> None:
        """Warm stop: let running jobs finish (up to ``worker_soft_shutdown_timeout`` when
        set), then cancel the rest, whose messages stay unacknowledged and return."""
        limit = float(self.app.conf.worker_soft_shutdown_timeout or 0) if self.app else 0.0
        deadline = time.monotonic() + limit if limit > 0 else None
        while self._running() and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.05)
        self.on_terminate()

    def on_terminate(self) -> None:
        """Cancel every running job (their messages are not acknowledged) and stop."""
        executor, self.executor = self.executor, None
        for job in self._running():
            job.terminate()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        self._closing.set()

    def terminate_job(self, pid: int, signal: int | None = None) -> None:
        """Nothing by pid: Celery's Request cancels the job through its handle."""

    def restart(self) -> None:
        """Nothing to restart: the tasks run in this process."""

    def _get_info(self) -> dict[str, Any]:
        info = base_pool_info(self)
        window = self.fetch_window
        info.update(
            {
                "max-concurrency": self.limit,
                "running": len(self._running()),
                "hub-on-loop": self.wake_hub is not None,
                "traced-on-loop": self.traced_on_loop,
                "traced-in-threads": self.traced_in_threads,
                "pipelined-writes": getattr(self.green_pipeline, "commands", 0),
                "pipelined-round-trips": getattr(self.green_pipeline, "flushes", 0),
                "fetch-window": None if window is None else window.size,
                "loop-lag": None if window is None else round(window.lag, 4),
                "fetch-window-changes": None if window is None else [window.grown, window.shrunk],
            }
        )
        return info

    @property
    def num_processes(self) -> int:
        """Celery's count of execution slots."""
        return int(self.limit)
