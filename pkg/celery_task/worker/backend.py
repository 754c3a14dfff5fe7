"""Redis result backend: records start time and runtime, stores each state in one
atomic round trip, and writes STARTED only for tasks that are still running.

- ``BaseTask`` stamps ``started_at`` on the request when the body starts; results then
  carry ``date_started`` and ``runtime_ms`` next to Celery's ``date_done``.
- Celery writes a state as GET (to keep an existing SUCCESS) then SET + PUBLISH: two
  round trips with a race between them. A Lua script does the same check and write
  atomically in one, with the same value, expiry and notification.
- With ``task_track_started`` every task writes STARTED, and a short task overwrites
  it a few milliseconds later. STARTED is written once the task has run for
  ``tasksys_started_delay`` seconds (0: at once, as Celery does), those falling due
  together written in one pipelined round trip; any later state of
  the task cancels a pending STARTED, so STARTED never lands after it; and a stored
  final state (also one another process wrote, like the API's REVOKED) is never
  replaced by a state that is not final.
- When Redis is out of memory (``maxmemory``, ``noeviction``) a store is retried with
  capped backoff for ``tasksys_store_oom_retry_period`` seconds (default 600; on the
  asyncio pool only the waiting task pauses, not the loop). If it
  still cannot be stored, a prefork pool process exits instead of reporting, and on
  the pools that run tasks in the worker process (asyncio, threads, solo) the store
  raises :class:`ResultStoreGaveUp`, which the pool reports as a lost job: either way
  the message is requeued (``reject_on_worker_lost``) rather than acknowledged with
  its result lost. Celery itself retries only connection errors, and an out-of-memory answer
  stored nothing and acknowledged the message anyway.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis.exceptions
from billiard.process import current_process
from celery import states
from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.functional import fxrange

from .._compat import celery_result_meta, celery_store_result, max_result_size
from .._options import options_of
from .greenio import in_tracer, on_loop_pipeline, pause, pipelined, succeeded

__all__ = ["STORE_FAILED_EXIT", "ResultStoreGaveUp", "TimedRedisBackend"]

logger = logging.getLogger(__name__)

#: Most deferred STARTED states written in one pipelined round trip.
DEFERRED_BATCH_MAX = 100
#: A deferred write waits this fraction of the delay longer, so that those falling due
#: just after it go out in the same round trip.
DEFERRED_COALESCE = 0.25

#: Exit status of a pool process that could not store a result (EX_TEMPFAIL).
STORE_FAILED_EXIT = 75


class ResultStoreGaveUp(BaseException):
    """Redis refused a task's result store for lack of memory for longer than the retry
    period. Not an ``Exception``: Celery's tracer neither records nor acknowledges it,
    and the pool reports the job lost, so its message is requeued (Celery's own pools
    turn it into ``WorkerLostError``; the asyncio pool does the same)."""


#: KEYS[1] result key; ARGV[1] encoded meta; ARGV[2] expiry in seconds (0: none);
#: ARGV[3] '1' when the state written is not final (STARTED, PROGRESS, RETRY...).
#: Returns 0 (and writes nothing) when the stored state is already SUCCESS, or final
#: (SUCCESS, FAILURE, REVOKED) and the state written is not: a STARTED written late
#: by another thread or process (the API stored REVOKED) never undoes a final state.
STORE_UNLESS_SUCCESS = """
local current = redis.call('GET', KEYS[1])
if current then
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' then
        local status = meta['status']
        if status == 'SUCCESS' or (ARGV[3] == '1' and (status == 'FAILURE' or status == 'REVOKED')) then
            return 0
        end
    end
end
if tonumber(ARGV[2]) > 0 then
    redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class TimedRedisBackend(CeleryRedisBackend):  # type: ignore[misc]
    """Celery's Redis backend plus ``date_started``/``runtime_ms``, with atomic stores."""

    def _get_result_meta(
        self,
        result: Any,
        state: str,
        traceback: Any,
        request: Any,
        format_date: bool = True,
        encode: bool = False,
    ) -> dict[str, Any]:
        meta = celery_result_meta(
            self, result, state, traceback, request, format_date=format_date, encode=encode
        )
        started_at = getattr(request, "started_at", None) if request is not None else None
        if started_at is not None:
            meta["date_started"] = datetime.fromtimestamp(started_at, UTC).isoformat()
            if state in self.READY_STATES:
                finished = datetime.now(UTC).timestamp()
                meta["runtime_ms"] = round((finished - started_at) * 1000, 3)
        return meta

    def _store_result(
        self, task_id: Any, result: Any, state: str, traceback: Any = None, request: Any = None, **kwargs: Any
    ) -> Any:
        if self.serializer != "json":
            return celery_store_result(
                self, task_id, result, state, traceback=traceback, request=request, **kwargs
            )
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = task_id.decode() if isinstance(task_id, bytes) else str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > max_result_size(self):
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        key = self.get_key_for_task(task_id)
        deferred = self._deferred_started()
        if state == states.STARTED and deferred is not None:
            deferred.add(key, (key, value, expires, True))
            return result
        if deferred is not None:
            deferred.cancel(key)
        progress = state not in self.READY_STATES
        if not self._store_pipelined(key, value, expires, progress):
            self.ensure(self._store_unless_success, (key, value, expires, progress))
        return result

    def ensure(self, fun: Callable[..., Any], args: Any, **policy: Any) -> Any:
        """Celery's retry of a call through connection errors, with the same policy and
        log; in a tracer greenlet of the asyncio pool its backoff pauses that tracer
        only (Celery's sleeps the loop thread, and every task of the process with it)."""
        if not in_tracer():
            return super().ensure(fun, args, **policy)
        retry = dict(self.retry_policy, **policy)
        max_retries = retry.get("max_retries")
        longest = float(retry.get("interval_max", 1))
        start = float(retry.get("interval_start", 0))
        steps = fxrange(start, longest + start, float(retry.get("interval_step", 1)), repeatlast=True)  # type: ignore[no-untyped-call]
        intervals = (min(value, longest) for value in steps)
        retries = 0
        while True:
            try:
                return fun(*args)
            except self.connection_errors as exc:
                if max_retries is not None and retries >= max_retries:
                    raise
                pause(min(float(self.on_connection_error(max_retries, exc, intervals, retries)), longest))
                retries += 1

    def _store_pipelined(self, key: bytes, value: str, expires: Any, progress: bool) -> bool:
        """In a tracer greenlet of the asyncio pool: the store, sent with the other
        writes of the loop turn (:mod:`.greenio`). False when it was not stored so."""
        if not on_loop_pipeline():
            return False
        sha = self._store_script.sha
        args = (sha, 1, key, value, _seconds(expires), "1" if progress else "0")
        return succeeded(pipelined(self.client, lambda pipe: pipe.evalsha(*args)))

    def _deferred_started(self) -> _DeferredWrites | None:
        delay = options_of(self.app).started_delay
        if delay <= 0:
            return None
        deferred = self.__dict__.get("_tasksys_deferred")
        if deferred is None or deferred.pid != os.getpid():
            deferred = self.__dict__["_tasksys_deferred"] = _DeferredWrites(
                lambda batch: self.ensure(self._store_many_unless_success, (batch,)), delay
            )
        return deferred

    def _store_unless_success(
        self, key: bytes, value: str, expires: Any, progress: bool = False, give_up: bool = True
    ) -> None:
        seconds = _seconds(expires)
        # Only workers wait for memory; a producer (the API's revoke) answers at once.
        options = options_of(self.app)
        period = options.store_oom_retry_period if options.store_oom_retry else 0.0
        deadline = time.monotonic() + period
        delay, warned_at = 0.05, 0.0
        while True:
            try:
                self._store_script(keys=[key], args=[value, seconds, "1" if progress else "0"])
                return
            except redis.exceptions.OutOfMemoryError as exc:
                now = time.monotonic()
                if now >= deadline:
                    if give_up and options.store_oom_retry:
                        self._give_up_store(key, exc)
                    raise
                if now - warned_at >= 10:
                    logger.warning(
                        "Redis is out of memory (%s); retrying the result store of %r for up to %.0f s",
                        exc,
                        key,
                        deadline - now,
                    )
                    warned_at = now
                pause(min(delay, max(deadline - now, 0.0)))
                delay = min(delay * 2, 2.0)

    def _store_many_unless_success(self, batch: list[tuple[Any, ...]]) -> None:
        """Store several ``(key, value, expires, progress)`` states in one pipelined
        round trip; one Redis refused for lack of memory is stored again on its own,
        with the out-of-memory retries of :meth:`_store_unless_success`."""
        with self.client.pipeline(transaction=False) as pipe:
            for key, value, expires, progress in batch:
                self._store_script(
                    keys=[key], args=[value, _seconds(expires), "1" if progress else "0"], client=pipe
                )
            replies = pipe.execute(raise_on_error=False)
        failed: Exception | None = None
        for args, reply in zip(batch, replies, strict=True):
            if isinstance(reply, redis.exceptions.OutOfMemoryError):
                # A STARTED state: past the retry period it is reported, not given up on.
                key, value, expires, progress = args
                self._store_unless_success(key, value, expires, progress, give_up=False)
            elif isinstance(reply, Exception):
                failed = failed or reply
        if failed is not None:
            raise failed

    def _give_up_store(self, key: bytes, exc: Exception) -> None:
        """In a worker, end the job so its message is requeued: a prefork pool process
        exits; elsewhere :class:`ResultStoreGaveUp` is raised to the pool."""
        if current_process().name.startswith("ForkPoolWorker"):
            logger.critical(
                "Redis stayed out of memory; the result of %r cannot be stored (%s). This pool "
                "process exits so its message is requeued, not acknowledged without a result",
                key,
                exc,
            )
            os._exit(STORE_FAILED_EXIT)
        raise ResultStoreGaveUp(
            f"Redis stayed out of memory; the result of {key!r} cannot be stored ({exc}); "
            "its message is requeued, not acknowledged without a result"
        ) from exc

    @property
    def _store_script(self) -> Any:
        script = self.__dict__.get("_tasksys_store_script")
        if script is None:
            script = self.__dict__["_tasksys_store_script"] = self.client.register_script(
                STORE_UNLESS_SUCCESS
            )
        return script


def _seconds(expires: Any) -> int:
    """A result expiry (timedelta, seconds or None) as whole seconds, 0 for none."""
    return int(expires.total_seconds()) if hasattr(expires, "total_seconds") else int(expires or 0)


class _DeferredWrites:
    """Writes queued by key after a delay, on a daemon thread of this process.

    Every write waits the same delay, so the order of insertion is the order in which
    they fall due: the earliest is the first entry (no scan of the pending ones). The
    thread waits a further fraction of the delay past it, then hands all that are due
    to ``write_many`` together, in one round trip. :meth:`cancel` of a key whose write
    is under way returns only once that write has finished, so a later write can never
    be overtaken; the cancel of any other key does not wait for it.
    """

    def __init__(self, write_many: Callable[[list[tuple[Any, ...]]], None], delay: float) -> None:
        self.pid = os.getpid()
        self.write_many = write_many
        self.delay = delay
        self.lock = threading.Lock()
        self.wakeup = threading.Condition(self.lock)
        self.written = threading.Condition(self.lock)
        self.writing: set[Any] = set()
        self.pending: dict[Any, tuple[float, tuple[Any, ...]]] = {}
        self.thread: threading.Thread | None = None

    def add(self, key: Any, args: tuple[Any, ...]) -> None:
        """Write ``args`` after the delay unless cancelled first (a key added again
        waits the delay anew, with the newer ``args``)."""
        with self.lock:
            was_idle = not self.pending
            self.pending.pop(key, None)
            self.pending[key] = (time.monotonic() + self.delay, args)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="tasksys-deferred-started", daemon=True)
                self.thread.start()
            if was_idle:
                self.wakeup.notify()

    def cancel(self, key: Any) -> None:
        """Drop a pending write (waiting for one that is being written)."""
        with self.lock:
            self.pending.pop(key, None)
            while key in self.writing:
                self.written.wait()

    def _take_due(self) -> list[tuple[Any, tuple[Any, ...]]]:
        """Remove and return the writes that are due (key, args), earliest first."""
        now = time.monotonic()
        due: list[tuple[Any, tuple[Any, ...]]] = []
        for key, (when, args) in self.pending.items():
            if when > now or len(due) >= DEFERRED_BATCH_MAX:
                break
            due.append((key, args))
        for key, _ in due:
            del self.pending[key]
        return due

    def _run(self) -> None:
        with self.lock:
            while True:
                if not self.pending:
                    self.wakeup.wait()
                    continue
                first = next(iter(self.pending.values()))[0]
                wait = first + self.delay * DEFERRED_COALESCE - time.monotonic()
                if wait > 0:
                    self.wakeup.wait(wait)
                    continue
                batch = self._take_due()
                self.writing = {key for key, _ in batch}
                self.lock.release()
                try:
                    self.write_many([args for _, args in batch])
                except Exception:  # a loop boundary: report and keep serving other tasks
                    logger.warning(
                        "could not store the STARTED state of %d task(s), first %r",
                        len(batch),
                        batch[0][0],
                        exc_info=True,
                    )
                finally:
                    self.lock.acquire()
                    self.writing = set()
                    self.written.notify_all()
