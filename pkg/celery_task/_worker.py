"""Worker-side machinery: lifecycle hooks, the unacked-message heartbeat, durable revokes.

All of it runs only inside ``celery worker`` processes; producers never start threads.
"""

from __future__ import annotations

import heapq
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis
from celery import Celery, bootsteps
from celery import signals as celery_signals
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport import redis as kombu_redis
from kombu.utils.url import maybe_sanitize_url

from ._deadletter import MAX_TEXT, dead_letters_for, error_of
from ._loop import process_loop

__all__ = [
    "Consumer",
    "DurableRevokes",
    "EventBatching",
    "RevokeStore",
    "TimerCompaction",
    "UnackedHeartbeat",
    "WorkerHooks",
]

logger = logging.getLogger(__name__)

Hook = Callable[[], Any]

#: Exit status of a pool process whose startup hook failed (EX_SOFTWARE).
HOOK_FAILED_EXIT = 70


def _call_hook(hook: Hook) -> None:
    """Call a sync hook, or run an async one on this process's long-lived loop."""
    if inspect.iscoroutinefunction(hook):
        process_loop().run(hook())
        return
    result = hook()
    if inspect.isawaitable(result):
        process_loop().run(_awaitable(result))


async def _awaitable(awaitable: Any) -> Any:
    return await awaitable


class WorkerHooks:
    """Runs startup hooks once in every process that executes tasks (each prefork child,
    or the main process of solo/threads pools) before its first task, and shutdown hooks
    once in each such process on warm shutdown."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.on_startup: list[Hook] = []
        self.on_shutdown: list[Hook] = []
        self._started_pid: int | None = None
        celery_signals.worker_init.connect(self._on_worker_init, weak=False)
        celery_signals.worker_process_init.connect(self._on_process_init, weak=False)
        celery_signals.worker_process_shutdown.connect(self._on_process_shutdown, weak=False)
        celery_signals.worker_shutdown.connect(self._on_worker_shutdown, weak=False)

    def register(self, on_startup: Hook | None, on_shutdown: Hook | None) -> None:
        """Add hooks; each list runs in registration order."""
        for hook in (on_startup, on_shutdown):
            if hook is not None and not callable(hook):
                raise TypeError(f"worker hook must be callable, got {hook!r}")
        if on_startup is not None:
            self.on_startup.append(on_startup)
        if on_shutdown is not None:
            self.on_shutdown.append(on_shutdown)

    def _is_ours(self, app: Celery | None) -> bool:
        return app is self.app

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if not self._is_ours(getattr(sender, "app", None)):
            return
        _refuse_wrong_credentials(self.app)
        _use_worker_backend_retries(self.app)
        pool_cls = get_implementation(sender.pool_cls)
        if isinstance(pool_cls, type) and issubclass(pool_cls, PreforkPool):
            return  # the children run the hooks (worker_process_init)
        if not self._run_startup():
            raise SystemExit(HOOK_FAILED_EXIT)

    def _on_process_init(self, **_: Any) -> None:
        from celery import current_app

        if not self._is_ours(current_app._get_current_object()):
            return
        if not self._run_startup():
            # Stop the whole worker: a pool that respawns a child whose startup keeps
            # failing would loop forever and never take a task anyway.
            os.kill(os.getppid(), signal.SIGTERM)
            os._exit(HOOK_FAILED_EXIT)

    def _run_startup(self) -> bool:
        pid = os.getpid()
        for hook in self.on_startup:
            try:
                _call_hook(hook)
            except Exception:
                logger.critical(
                    "worker startup hook %s failed in process %d; this process will not "
                    "take tasks and the worker is stopping",
                    _hook_name(hook),
                    pid,
                    exc_info=True,
                )
                return False
        self._started_pid = pid
        return True

    def _on_process_shutdown(self, **_: Any) -> None:
        self._run_shutdown()

    def _on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        if self._is_ours(getattr(sender, "app", None)):
            self._run_shutdown()

    def _run_shutdown(self) -> None:
        if self._started_pid != os.getpid():
            return
        self._started_pid = None
        for hook in self.on_shutdown:
            try:
                _call_hook(hook)
            except Exception:
                logger.error(
                    "worker shutdown hook %s failed in process %d",
                    _hook_name(hook),
                    os.getpid(),
                    exc_info=True,
                )
        process_loop().stop()


#: Exit status of a worker whose Redis credentials are refused (EX_CONFIG).
BAD_CREDENTIALS_EXIT = 78


def _refuse_wrong_credentials(app: Celery) -> None:
    """Stop at once, saying so, if Redis refuses the worker's password: Celery would
    retry forever, since redis-py reports it as a connection error."""
    urls = {app.conf.tasksys_redis_url, app.conf.broker_url, app.conf.result_backend}
    for url in sorted(u for u in urls if isinstance(u, str) and u.startswith(("redis://", "rediss://"))):
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        except redis.AuthenticationError as exc:
            logger.critical(
                "Redis at %s refused the credentials (%s); check REDIS_PASSWORD or the URL",
                maybe_sanitize_url(url),
                exc,
            )
            raise SystemExit(BAD_CREDENTIALS_EXIT) from None
        except (redis.RedisError, OSError):
            pass  # not reachable yet: Celery keeps retrying the connection
        finally:
            client.close()


def _use_worker_backend_retries(app: Celery) -> None:
    """In a worker, result stores retry long enough to ride out a Redis restart."""
    options = dict(app.conf.result_backend_transport_options or {})
    options["retry_policy"] = dict(app.conf.tasksys_worker_backend_retry_policy)
    app.conf.result_backend_transport_options = options
    backend = app.backend
    if hasattr(backend, "_transport_options"):  # Redis backend: copied from the conf when built
        backend._transport_options = options
        backend.__dict__.pop("retry_policy", None)  # a cached_property


def _hook_name(hook: Hook) -> str:
    return getattr(hook, "__qualname__", None) or repr(hook)


class RevokeStore:
    """Revoked task ids kept in a Redis sorted set (score = revoke time), so every
    worker, including ones started later, honours them until they expire."""

    def __init__(self, client: redis.Redis, key: str, expires: float) -> None:
        self.client = client
        self.key = key
        self.expires = expires

    def add(self, task_ids: Iterable[str]) -> None:
        """Record ids as revoked now and drop entries older than ``expires``."""
        now = time.time()
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(self.key, dict.fromkeys(task_ids, now))
            pipe.zremrangebyscore(self.key, "-inf", now - self.expires)
            pipe.expire(self.key, int(self.expires) + 60)
            pipe.execute()

    def since(self, after: float) -> list[tuple[str, float]]:
        """Ids revoked after ``after`` (and not yet expired), oldest first."""
        floor = max(after, time.time() - self.expires)
        rows = self.client.zrange(self.key, f"({floor}", "+inf", byscore=True, withscores=True)
        return [(_text(member), float(score)) for member, score in cast(list[tuple[Any, Any]], rows)]

    def contains(self, task_id: str) -> bool:
        """True if ``task_id`` is revoked and not expired."""
        score = self.client.zscore(self.key, task_id)
        return score is not None and float(score) > time.time() - self.expires


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def revoke_store_for(app: Celery, client: redis.Redis | None = None) -> RevokeStore:
    """The revoke store configured on ``app`` (``tasksys_*`` settings)."""
    conf = app.conf
    client = client or redis.Redis.from_url(
        conf.tasksys_redis_url, socket_connect_timeout=2, socket_timeout=5
    )
    return RevokeStore(client, conf.tasksys_key_prefix + "revoked", float(conf.tasksys_revoke_expires))


class DurableRevokes(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: loads the shared revoke list when the consumer (re)starts, then
    polls it, so a revoke sent while this worker was down or disconnected still holds."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    poll_interval = 2.0

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self._store: RevokeStore | None = None
        self._last = 0.0
        self._tref: Any = None

    def start(self, c: Any) -> None:
        if self._store is None:
            self._store = revoke_store_for(c.app)
            worker_state.revoked.expires = self._store.expires
        self._sync()
        if self._tref is None:
            self._tref = c.timer.call_repeatedly(self.poll_interval, self._sync)

    def _sync(self) -> None:
        if self._store is None:
            return
        try:
            rows = self._store.since(self._last)
        except redis.RedisError as exc:
            logger.warning("could not read the shared revoke list: %s", exc)
            return
        if rows:
            worker_state.merge_revoked([task_id for task_id, _ in rows])
            self._last = rows[-1][1]

    def stop(self, c: Any) -> None:
        pass

    def shutdown(self, c: Any) -> None:
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        if self._store is not None:
            self._store.client.close()


class UnackedHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: refreshes the Redis transport's unacked-index timestamps of the
    messages this worker holds (running, reserved, waiting for their ETA).

    With a short ``visibility_timeout`` a dead worker's messages come back within about
    that long, and a live worker's long or ETA-held messages are never restored to
    another worker while it keeps beating. A thread, not the event loop, beats, so a
    task blocking the main thread (solo pool) does not stop it.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self, c: Any) -> None:
        self._halt()
        channel = c.task_consumer.channel if c.task_consumer is not None else None
        if not isinstance(channel, kombu_redis.Channel):
            return
        interval = float(
            c.app.conf.tasksys_unacked_heartbeat_interval or max(1.0, channel.visibility_timeout / 6)
        )
        stop = threading.Event()
        thread = threading.Thread(
            target=self._beat,
            args=(channel, interval, stop),
            name="tasksys-unacked-heartbeat",
            daemon=True,
        )
        self._stop, self._thread = stop, thread
        thread.start()

    @staticmethod
    def _beat(channel: kombu_redis.Channel, interval: float, stop: threading.Event) -> None:
        client = channel._create_client(asynchronous=False)  # type: ignore[no-untyped-call]
        key = channel.unacked_index_key
        while not stop.wait(interval):
            tags = list(channel.qos._delivered)
            if not tags:
                continue
            now = time.time()
            try:
                client.zadd(key, dict.fromkeys(tags, now), xx=True)
            except redis.RedisError as exc:
                logger.warning("unacked heartbeat failed (will retry): %s", exc)

    def _halt(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._stop = self._thread = None

    def stop(self, c: Any) -> None:
        self._halt()

    def shutdown(self, c: Any) -> None:
        self._halt()


class EventBatching(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: publish the worker's buffered task events on a short timer.

    Celery already sends task events as one ``task.multi`` message per flush, but it
    flushes on every turn of the event loop: about one synchronous PUBLISH per task in
    the process that also fetches and acknowledges messages. Flushing every
    ``tasksys_event_flush_interval`` seconds (or at ``tasksys_event_buffer_limit``
    events) keeps the same events, in order, at most that much later.
    """

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self._pending = False

    def start(self, c: Any) -> None:
        dispatcher = c.event_dispatcher
        interval = float(c.app.conf.tasksys_event_flush_interval)
        if dispatcher is None or c.hub is None or interval <= 0:
            return
        dispatcher.buffer_limit = max(dispatcher.buffer_limit, int(c.app.conf.tasksys_event_buffer_limit))

        def flush() -> None:
            self._pending = False
            c._flush_events()

        def schedule() -> None:
            if not self._pending:
                self._pending = True
                c.timer.call_after(interval, flush)

        dispatcher.on_send_buffered = schedule

    def _flush(self, c: Any) -> None:
        if c.event_dispatcher is not None:
            try:
                c.event_dispatcher.flush()
            except Exception:  # shutting down: report, never block the shutdown
                logger.warning("could not flush buffered task events", exc_info=True)

    def stop(self, c: Any) -> None:
        self._flush(c)

    def shutdown(self, c: Any) -> None:
        self._flush(c)


class TimerCompaction(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: drop cancelled entries from the event loop's timer heap.

    With time limits set, the prefork pool schedules a soft and a hard time-limit timer
    for every task and cancels them when it finishes; kombu's timer keeps cancelled
    entries until they come due, so the worker holds rate x hard-limit entries (about
    150 MB at 1,000 tasks/s with a 6-minute limit). Compacting every few seconds bounds
    that to a few seconds' worth.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)
    interval = 5.0

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self._tref: Any = None

    def start(self, c: Any) -> None:
        hub = getattr(c, "hub", None)
        if hub is None or self._tref is not None:
            return
        timer = hub.timer

        def compact() -> None:
            queue = timer._queue
            live = [item for item in queue if not item.entry.canceled]
            if len(live) < len(queue):
                heapq.heapify(live)
                queue[:] = live

        self._tref = hub.call_repeatedly(self.interval, compact)

    def shutdown(self, c: Any) -> None:
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's worker consumer, which also dead-letters the messages it refuses:
    unregistered task names, invalid messages and bodies it cannot decode (including
    content types it does not accept, such as pickle). Celery logs and drops them."""

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, body, "unregistered", exc)
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, body, "invalid", exc)
        super().on_invalid_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, body, "invalid", None)
        super().on_unknown_message(body, message)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._dead_letter(message, None, "undecodable", exc)
        super().on_decode_error(message, exc)

    def _dead_letter(self, message: Any, body: Any, reason: str, exc: Exception | None) -> None:
        headers = getattr(message, "headers", None) or {}
        if body is None and reason != "undecodable":
            try:
                body = message.decode()  # Celery hands over no body for unregistered tasks
            except Exception:  # the entry is recorded without arguments then
                body = None
        args = kwargs = None
        if isinstance(body, list | tuple) and len(body) >= 2 and isinstance(body[1], dict):
            args, kwargs = list(body[0]), body[1]
        raw = getattr(message, "body", None)
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        entry = {
            "task_id": headers.get("id"),
            "task": headers.get("task"),
            "args": args,
            "kwargs": kwargs,
            "queue": (getattr(message, "delivery_info", None) or {}).get("routing_key"),
            "reason": reason,
            "error": error_of(exc),
            "content_type": getattr(message, "content_type", None),
            "body": None if args is not None else (raw[:MAX_TEXT] if isinstance(raw, str) else None),
            "resubmittable": args is not None and bool(headers.get("task")),
        }
        try:
            dead_letters_for(self.app).record(entry)
        except redis.RedisError:
            logger.error("could not dead-letter a refused message (%s)", reason, exc_info=True)
