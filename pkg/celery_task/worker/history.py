"""Task history, worker side: each task's lifecycle (received, started, retried,
finished, revoked) as JSON records on the ``<key_prefix>history`` Redis stream, which
``scripts/run_history_recorder.py`` writes to the database.

Records are buffered in each process and appended with one pipeline per flush (on a
short timer or every :data:`FLUSH_EVERY` records), so a task costs no Redis round
trip of its own. A Redis error keeps the records buffered (up to :data:`BUFFER_LIMIT`)
for the next flush; it never fails a task or stops the worker. Warm shutdown flushes.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import traceback as traceback_module
import weakref
from typing import Any

import redis
from celery import Celery
from celery import signals as celery_signals

from .._options import options_of
from .._sent import encode_record as _encode
from .._sent import stream_key

__all__ = [
    "BUFFER_LIMIT",
    "FLUSH_EVERY",
    "FLUSH_INTERVAL",
    "TaskHistory",
    "mask_kwargs",
    "stream_key",
    "truncate",
]

logger = logging.getLogger(__name__)

#: Seconds a record waits in the buffer at most (while Redis answers).
FLUSH_INTERVAL = 0.2
#: A flush starts early once this many records are buffered.
FLUSH_EVERY = 200
#: Records kept per process while Redis is unreachable (oldest dropped beyond).
BUFFER_LIMIT = 100_000
#: Characters of a traceback kept.
TRACEBACK_LIMIT = 16_384
#: Characters of an error message kept.
MESSAGE_LIMIT = 2_048
MASK = "***"


def truncate(value: Any, limit: int) -> Any:
    """``value`` if its JSON text fits in ``limit`` bytes, else that text cut to fit and
    marked as ``{"truncated": <prefix>}`` (a value JSON cannot encode is shown by repr)."""
    try:
        text = _encode(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
        value = text
    data = text.encode("utf-8")
    if len(data) <= limit:
        return value
    return {"truncated": data[:limit].decode("utf-8", "ignore")}


def mask_kwargs(kwargs: Any, mask_keys: tuple[str, ...]) -> Any:
    """``kwargs`` with the values of keys named in ``mask_keys`` (lower case) replaced."""
    if not isinstance(kwargs, dict):
        return kwargs
    return {k: (MASK if isinstance(k, str) and k.lower() in mask_keys else v) for k, v in kwargs.items()}


def _queue_of(request: Any) -> str | None:
    info = getattr(request, "delivery_info", None) or {}
    queue = info.get("routing_key") or info.get("queue")
    return str(queue) if queue else None


class TaskHistory:
    """Connects the task signals of ``app`` (once history is enabled in its options
    when the worker starts) and buffers, then flushes, their records."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._lock = threading.Lock()
        #: One flush at a time (the timer thread and a shutdown flush would send twice).
        self._flushing = threading.Lock()
        self._buffer: collections.deque[str] = collections.deque()
        self._wake = threading.Event()
        self._pid: int | None = None
        self._client: redis.Redis | None = None
        self._failing = False
        self._started: dict[str, float] = {}
        self._connected = False
        _track(self)

    def reset_after_fork(self) -> None:
        """In a forked child: fresh locks and client, an empty buffer (the parent sends
        its own records); the parent's client is kept, never closed, here (see below)."""
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._buffer.clear()
        self._started.clear()
        self._pid = None
        if self._client is not None:
            # Closing the parent's client in the child takes its connection pool's locks,
            # which the parent's flusher may have held at the fork: the child then blocks
            # for good (pool lock) or 5 s (fork lock) before its first task.
            _inherited.append(self._client)
            self._client = None

    def disconnect(self) -> None:
        """Stop receiving signals (safe twice)."""
        for signal, receiver in self._receivers():
            signal.disconnect(receiver)
        self._connected = False

    def _receivers(self) -> list[tuple[Any, Any]]:
        return [
            (celery_signals.task_received, self._on_received),
            (celery_signals.task_prerun, self._on_prerun),
            (celery_signals.task_retry, self._on_retry),
            (celery_signals.task_success, self._on_success),
            (celery_signals.task_failure, self._on_failure),
            (celery_signals.task_revoked, self._on_revoked),
            (celery_signals.worker_process_shutdown, self._on_shutdown),
            (celery_signals.worker_shutdown, self._on_shutdown),
        ]

    def start_if_enabled(self) -> None:
        """Start recording if ``tasksys_history`` is on (WorkerHooks calls this when
        this app's worker starts, before its pool forks)."""
        if not self._connected and options_of(self.app).history:
            self.connect()

    def connect(self) -> None:
        """Start recording this app's task signals in this worker."""
        for signal, receiver in self._receivers():
            signal.connect(receiver, weak=False)
        self._connected = True

    # -- records ---------------------------------------------------------------

    def _ours(self, sender: Any) -> bool:
        return getattr(sender, "app", None) is self.app

    def _add(self, record: dict[str, Any]) -> None:
        record["at"] = time.time()
        record["pid"] = os.getpid()
        text = _encode(record)
        with self._lock:
            self._ensure_thread()
            if len(self._buffer) >= BUFFER_LIMIT:
                self._buffer.popleft()
            self._buffer.append(text)
            size = len(self._buffer)
        if size >= FLUSH_EVERY:
            self._wake.set()

    def _values(self, args: Any, kwargs: Any) -> dict[str, Any]:
        options = options_of(self.app)
        limit = options.history_max_value_bytes
        return {
            "args": truncate(list(args) if isinstance(args, list | tuple) else args, limit),
            "kwargs": truncate(mask_kwargs(kwargs, options.history_mask_keys), limit),
        }

    def _on_received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        if not self._ours(sender) or request is None:
            return
        record = {
            "type": "received",
            "task_id": request.id,
            "task": request.name,
            "queue": _queue_of(request),
            "worker": getattr(sender, "hostname", None) or getattr(request, "hostname", None),
            "parent_id": getattr(request, "parent_id", None),
            "root_id": getattr(request, "root_id", None),
            "eta": getattr(request, "eta", None),
            **self._values(getattr(request, "args", None), getattr(request, "kwargs", None)),
        }
        self._add(record)

    def _on_prerun(self, sender: Any = None, task_id: str | None = None, task: Any = None, **kw: Any) -> None:
        if not self._ours(task) or task_id is None:
            return
        request = task.request
        self._started[task_id] = time.monotonic()
        self._add(
            {
                "type": "started",
                "task_id": task_id,
                "task": task.name,
                "queue": _queue_of(request),
                "worker": request.hostname,
                "retries": request.retries or 0,
                "parent_id": request.parent_id,
                "root_id": request.root_id,
                **self._values(kw.get("args"), kw.get("kwargs")),
            }
        )

    def _runtime_ms(self, task_id: str) -> float | None:
        started = self._started.pop(task_id, None)
        return None if started is None else round((time.monotonic() - started) * 1000, 3)

    def _on_retry(self, sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
        if not self._ours(sender) or request is None:
            return
        self._started.pop(request.id, None)
        self._add(
            {
                "type": "retried",
                "task_id": request.id,
                "task": sender.name,
                "worker": request.hostname,
                "retries": (request.retries or 0) + 1,
                "error": _error(reason),
            }
        )

    def _on_success(self, sender: Any = None, result: Any = None, **_: Any) -> None:
        if not self._ours(sender):
            return
        request = sender.request
        self._add(
            {
                "type": "succeeded",
                "task_id": request.id,
                "task": sender.name,
                "worker": request.hostname,
                "retries": request.retries or 0,
                "result": truncate(result, options_of(self.app).history_max_value_bytes),
                "runtime_ms": self._runtime_ms(request.id),
            }
        )

    def _on_failure(
        self,
        sender: Any = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        einfo: Any = None,
        **_: Any,
    ) -> None:
        if not self._ours(sender) or task_id is None:
            return
        request = sender.request
        trace = getattr(einfo, "traceback", None)
        if trace is None and exception is not None:
            trace = "".join(traceback_module.format_exception(exception))
        self._add(
            {
                "type": "failed",
                "task_id": task_id,
                "task": sender.name,
                "worker": request.hostname,
                "retries": request.retries or 0,
                "error": _error(exception),
                "traceback": None if trace is None else str(trace)[-TRACEBACK_LIMIT:],
                "runtime_ms": self._runtime_ms(task_id),
            }
        )

    def _on_revoked(self, sender: Any = None, request: Any = None, **kw: Any) -> None:
        if request is None or not (self._ours(sender) or self._ours(getattr(request, "task", None))):
            return
        self._started.pop(request.id, None)
        self._add(
            {
                "type": "revoked",
                "task_id": request.id,
                "task": getattr(sender, "name", None) or getattr(request, "task", None),
                "worker": getattr(request, "hostname", None),
                "detail": {"terminated": bool(kw.get("terminated")), "expired": bool(kw.get("expired"))},
            }
        )

    # -- flushing --------------------------------------------------------------

    def _ensure_thread(self) -> None:
        """Start this process's flusher (again after a fork); call with the lock held."""
        pid = os.getpid()
        if self._pid == pid:
            return
        self._pid = pid
        self._wake = threading.Event()
        threading.Thread(target=self._run, name="tasksys-history", daemon=True).start()

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            self.flush()

    def _redis(self) -> redis.Redis:
        if self._client is None:
            url = options_of(self.app).redis_url
            self._client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        return self._client

    def flush(self) -> int:
        """Append the buffered records to the stream in one pipeline; how many went out.
        On a Redis error they stay buffered for the next flush (logged once per outage)."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> int:
        with self._lock:
            batch = list(self._buffer)
        if not batch:
            return 0
        options = options_of(self.app)
        key = stream_key(options)
        try:
            pipe = self._redis().pipeline(transaction=False)
            for text in batch:
                pipe.xadd(key, {"r": text}, maxlen=options.history_stream_maxlen, approximate=True)
            pipe.execute()
        except Exception as exc:
            if not self._failing:
                self._failing = True
                logger.warning("task history: cannot reach Redis (%r); keeping records buffered", exc)
            return 0
        if self._failing:
            self._failing = False
            logger.info("task history: Redis answers again; buffered records sent")
        with self._lock:
            for _ in range(min(len(batch), len(self._buffer))):
                self._buffer.popleft()
        return len(batch)

    def _on_shutdown(self, **_: Any) -> None:
        self.flush()


_instances: weakref.WeakSet[TaskHistory] = weakref.WeakSet()
_fork_hook: list[bool] = []
#: Clients a forked child inherited: referenced so they are never finalized there.
_inherited: list[redis.Redis] = []


def _track(history: TaskHistory) -> None:
    """Reset ``history`` in forked children (one at-fork hook for all instances)."""
    _instances.add(history)
    if not _fork_hook:
        _fork_hook.append(True)
        os.register_at_fork(after_in_child=_reset_after_fork)


def _reset_after_fork() -> None:
    for history in list(_instances):
        history.reset_after_fork()


def _error(exc: Any) -> dict[str, str] | None:
    if exc is None:
        return None
    if isinstance(exc, BaseException):
        return {"type": type(exc).__name__, "message": str(exc)[:MESSAGE_LIMIT]}
    return {"type": type(exc).__name__, "message": repr(exc)[:MESSAGE_LIMIT]}
