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
import traceback
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis
from celery import Celery, bootsteps
from celery import signals as celery_signals
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.exceptions import InvalidTaskError
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.transport import redis as kombu_redis
from kombu.utils.url import maybe_sanitize_url

from ._compat import guard_process_task, wrap_control_command
from ._deadletter import MAX_TEXT, dead_letters_for, error_of
from ._limits import MAX_TASK_ID_LENGTH, escape_control
from ._loop import process_loop
from ._options import configure, options_of
from ._transport import REFUSED_HEADER

__all__ = [
    "Consumer",
    "DurableRevokes",
    "EscapingFormatter",
    "EventBatching",
    "LegacyUnackedSweep",
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
        celery_signals.after_setup_logger.connect(self._on_setup_logger, weak=False)
        celery_signals.after_setup_task_logger.connect(self._on_setup_logger, weak=False)

    def _on_setup_logger(self, logger: logging.Logger | None = None, **_: Any) -> None:
        """Worker and beat logs escape control characters (see :class:`EscapingFormatter`)."""
        from celery import current_app

        if logger is None or not self._is_ours(current_app._get_current_object()):
            return
        for handler in logger.handlers:
            if not isinstance(handler.formatter, EscapingFormatter):
                handler.setFormatter(EscapingFormatter(handler.formatter))

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


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def format_exception_escaped(exc_info: Any) -> str:
    """A traceback as ``logging`` prints it, but each exception's own message (which may
    carry user data) on one escaped line; the frames keep their lines."""
    exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
    if not isinstance(exc, BaseException):
        return escape_control("".join(traceback.format_exception(*exc_info)), keep_newlines=True)
    parts: list[str] = []
    chain: list[tuple[traceback.TracebackException, str | None]] = []
    te: traceback.TracebackException | None = traceback.TracebackException.from_exception(exc)
    link: str | None = None
    seen: set[int] = set()
    while te is not None and id(te) not in seen:
        seen.add(id(te))
        chain.append((te, link))
        if te.__cause__ is not None:
            te, link = te.__cause__, _CAUSE
        elif te.__context__ is not None and not te.__suppress_context__:
            te, link = te.__context__, _CONTEXT
        else:
            te = None
    for te, link in reversed(chain):
        if te.stack:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(te.stack.format())
        parts.extend(escape_control(line.rstrip("\n")) + "\n" for line in te.format_exception_only())
        if link is not None:
            parts.append(link)
    return escape_control("".join(parts), keep_newlines=True).rstrip("\n")


class EscapingFormatter(logging.Formatter):
    """Wraps a handler's formatter: control characters in the message are escaped (a
    kwargs key such as ``"\\n[2026-12-01 …: CRITICAL/MainProcess] FORGED"`` or
    ``"\\x1b[31m"`` stays inside its line), and in a traceback each exception message is
    kept to one escaped line while the frames keep their own lines."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.msg, record.args, record.exc_text
        try:
            record.msg, record.args = escape_control(record.getMessage()), None
        except Exception:  # a broken format string: let the inner formatter report it
            return self.inner.format(record)
        try:
            if record.exc_info and record.exc_info != (None, None, None):
                record.exc_text = format_exception_escaped(record.exc_info)
            if record.stack_info:
                record.stack_info = escape_control(record.stack_info, keep_newlines=True)
            return self.inner.format(record)
        finally:
            record.msg, record.args, record.exc_text = saved

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


#: Exit status of a worker whose Redis credentials are refused (EX_CONFIG).
BAD_CREDENTIALS_EXIT = 78


def _refuse_wrong_credentials(app: Celery) -> None:
    """Stop at once, saying so, if Redis refuses the worker's password: Celery would
    retry forever, since redis-py reports it as a connection error."""
    urls = {options_of(app).redis_url, app.conf.broker_url, app.conf.result_backend}
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
    """In a worker, result stores retry long enough to ride out a Redis restart, and
    through an out-of-memory Redis (producers and the API fail fast instead)."""
    configure(app, store_oom_retry=True)
    options = dict(app.conf.result_backend_transport_options or {})
    options["retry_policy"] = dict(options_of(app).worker_backend_retry_policy)
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
    options = options_of(app)
    client = client or redis.Redis.from_url(options.redis_url, socket_connect_timeout=2, socket_timeout=5)
    return RevokeStore(client, options.key_prefix + "revoked", options.revoke_expires)


#: Consumer attribute holding the worker's :class:`RevokeStore` for the revoke command.
_STORE_ATTR = "tasksys_revoke_store"


def _durable_revoke(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Celery's ``revoke`` remote-control command, which first records the ids in the
    shared store, so a revoke from any tool (``celery control revoke``, Flower, a plain
    app's ``control.revoke``) survives restarts like :meth:`CeleryClient.revoke`'s."""

    def revoke(state: Any, task_id: Any = None, *args: Any, **kwargs: Any) -> Any:
        store = getattr(getattr(state, "consumer", None), _STORE_ATTR, None)
        if isinstance(store, RevokeStore):
            ids = [task_id] if isinstance(task_id, str) else task_id
            ids = [i for i in ids or () if isinstance(i, str) and 0 < len(i) <= MAX_TASK_ID_LENGTH]
            try:
                if ids:
                    store.add(ids)
            except redis.RedisError as exc:
                logger.warning("could not record revoked tasks %s in the shared store: %s", ids, exc)
        return handler(state, task_id, *args, **kwargs)

    return revoke


class DurableRevokes(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: loads the shared revoke list when the consumer (re)starts, then
    polls it, so a revoke sent while this worker was down or disconnected still holds;
    and records every revoke this worker receives, whichever tool sent it."""

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
        setattr(c, _STORE_ATTR, self._store)
        if not wrap_control_command("revoke", _durable_revoke):
            logger.warning("Celery has no 'revoke' control command; revokes from other tools are not durable")
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


#: Transport options the legacy sweep's stock connection keeps from ours (where the
#: keys are and how to connect); everything else is kombu's default, as stock workers use.
_LEGACY_OPTIONS = frozenset(
    {"global_keyprefix", "socket_connect_timeout", "socket_timeout", "health_check_interval", "sep"}
)


class LegacyUnackedSweep:
    """Restores kombu's default unacked index (``unacked_index``) exactly as a stock
    kombu worker would: entries older than ``timeout`` go back to their queue, filed on
    stock's priority steps. Our workers keep their own index, so without this the
    entries our versions before it left there (or stock workers that died while no
    stock worker runs) would never come back."""

    interval = 60.0
    batch = 1000

    def __init__(self, connection: Any, timeout: float) -> None:
        self._connection = connection
        self.timeout = timeout
        self._next = 0.0

    @classmethod
    def for_channel(cls, channel: kombu_redis.Channel, timeout: float | None) -> LegacyUnackedSweep | None:
        """The sweep for a worker on ``channel``; ``None`` when it uses kombu's default
        index itself (kombu sweeps it then) or ``timeout`` is 0 / ``None``."""
        if not timeout or channel.unacked_index_key == kombu_redis.Channel.unacked_index_key:
            return None
        conn = channel.connection.client
        options = {k: v for k, v in (conn.transport_options or {}).items() if k in _LEGACY_OPTIONS}
        options["visibility_timeout"] = float(timeout)
        return cls(conn.clone(transport="redis", transport_options=options), float(timeout))

    def maybe_sweep(self, now: float) -> None:
        """Sweep at the first call and then every :attr:`interval` seconds."""
        if now < self._next:
            return
        self._next = now + self.interval
        try:
            qos = self._connection.default_channel.qos
            with qos.channel.conn_or_acquire() as client:
                stale = int(client.zcount(qos.unacked_index_key, 0, now - self.timeout))
            if stale:
                logger.warning(
                    "restoring %d message(s) held more than %d s in kombu's default unacked index %r",
                    stale,
                    self.timeout,
                    qos.unacked_index_key,
                )
                qos.restore_visible(num=self.batch, interval=1)
        except (redis.RedisError, KombuOperationalError, OSError) as exc:
            logger.warning("could not sweep kombu's default unacked index (will retry): %s", exc)

    def close(self) -> None:
        """Release the sweep's connection."""
        self._connection.release()


class UnackedHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: refreshes the Redis transport's unacked-index timestamps of the
    messages this worker holds (running, reserved, waiting for their ETA).

    With a short ``visibility_timeout`` a dead worker's messages come back within about
    that long, and a live worker's long or ETA-held messages are never restored to
    another worker while it keeps beating. A thread, not the event loop, beats, so a
    task blocking the main thread (solo pool) does not stop it. The same thread runs the
    :class:`LegacyUnackedSweep` of kombu's default index.
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
            options_of(c.app).unacked_heartbeat_interval or max(1.0, channel.visibility_timeout / 6)
        )
        legacy = LegacyUnackedSweep.for_channel(channel, options_of(c.app).legacy_unacked_timeout)
        stop = threading.Event()
        thread = threading.Thread(
            target=self._beat,
            args=(channel, interval, stop, legacy),
            name="tasksys-unacked-heartbeat",
            daemon=True,
        )
        self._stop, self._thread = stop, thread
        thread.start()

    @staticmethod
    def _beat(
        channel: kombu_redis.Channel,
        interval: float,
        stop: threading.Event,
        legacy: LegacyUnackedSweep | None = None,
    ) -> None:
        client = channel._create_client(asynchronous=False)  # type: ignore[no-untyped-call]
        key = channel.unacked_index_key
        try:
            while not stop.wait(interval):
                now = time.time()
                if legacy is not None:
                    legacy.maybe_sweep(now)
                tags = list(channel.qos._delivered)
                if not tags:
                    continue
                try:
                    client.zadd(key, dict.fromkeys(tags, now), xx=True)
                except redis.RedisError as exc:
                    logger.warning("unacked heartbeat failed (will retry): %s", exc)
        finally:
            if legacy is not None:
                legacy.close()

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
        interval = options_of(c.app).event_flush_interval
        if dispatcher is None or c.hub is None or interval <= 0:
            return
        dispatcher.buffer_limit = max(dispatcher.buffer_limit, options_of(c.app).event_buffer_limit)

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


#: Errors of the infrastructure (Redis, the broker), not of the message: a message that
#: meets one of these is returned to the queue, never dead-lettered.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    KombuOperationalError,
    ConnectionError,
    TimeoutError,
)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's worker consumer, which also dead-letters the messages it refuses:
    unregistered task names, invalid messages and bodies it cannot decode (including
    content types it does not accept, such as pickle). Celery logs and drops them.

    It also survives any message it cannot run. Celery lets an unexpected error while
    reading a message or handing it to the pool (a body nested too deep to pickle, a
    header of the wrong type) escape its event loop, which stops the worker; the
    message is then restored and stops the next one. Here such a message is
    dead-lettered with reason ``unrunnable`` and acknowledged, and the worker goes on;
    if the error came from Redis or the broker instead, the message is requeued.
    """

    def __init__(self, on_task_request: Callable[[Any], Any], *args: Any, **kwargs: Any) -> None:
        controller = kwargs.get("controller")
        if controller is not None:
            on_task_request = guard_process_task(
                controller, on_task_request, self._refuse_request, check=_check_arguments
            )
        super().__init__(on_task_request, *args, **kwargs)

    def _refuse_request(self, request: Any, exc: Exception) -> None:
        """A request the pool did not take: requeue it if Redis or the broker failed,
        otherwise dead-letter it (``unrunnable``) and acknowledge it."""
        worker_state.task_ready(request)
        if request.acknowledged:
            logger.error("task %s failed in the worker after its ack", request.id, exc_info=exc)
            return
        if isinstance(exc, INFRASTRUCTURE_ERRORS):
            logger.warning(
                "could not hand task %s to the pool (%s: %s); returning it to the queue",
                request.id,
                type(exc).__name__,
                exc,
            )
            request.reject(requeue=True)
            return
        reason = "invalid" if isinstance(exc, InvalidTaskError) else "unrunnable"
        logger.error(
            "task %s[%s] cannot be run (%s: %s); dead-lettered as %s",
            request.name,
            request.id,
            type(exc).__name__,
            exc,
            reason,
        )
        self._dead_letter(request.message, None, reason, exc)
        request.acknowledge()

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """Celery's handler for each delivered message, never raising out of the event
        loop for a message it cannot read (connection errors still propagate: the
        consumer reconnects)."""
        handler = super().create_task_handler(*args, **kwargs)
        # kombu's Redis transport counts KeyError as a connection error; here it means a
        # message without a field Celery needs (no ``id``), which a reconnect would only
        # redeliver, forever.
        connection_errors = tuple(e for e in self.connection_errors if not issubclass(e, LookupError))

        def on_task_received(message: Any) -> Any:
            try:
                return handler(message)
            except connection_errors:
                raise
            except Exception as exc:  # a loop boundary: the worker must keep consuming
                self._refuse_message(message, exc)
                return None

        return on_task_received

    def _refuse_message(self, message: Any, exc: Exception) -> None:
        if getattr(message, "acknowledged", False):
            logger.error("error after a message was acknowledged or rejected", exc_info=True)
            return
        if isinstance(exc, INFRASTRUCTURE_ERRORS):
            logger.warning(
                "could not take a message (%s: %s); returning it to the queue", type(exc).__name__, exc
            )
            message.reject_log_error(logger, self.connection_errors, requeue=True)
            return
        logger.error(
            "refusing a message that cannot be run (%s: %s); dead-lettered as unrunnable",
            type(exc).__name__,
            exc,
            exc_info=True,
        )
        self._dead_letter(message, None, "unrunnable", exc)
        message.ack_log_error(logger, self.connection_errors)

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
        headers = getattr(message, "headers", None)
        headers = headers if isinstance(headers, dict) else {}
        if body is None and reason not in ("undecodable", "unrunnable"):
            try:
                body = message.decode()  # Celery hands over no body for unregistered tasks
            except Exception:  # the entry is recorded without arguments then
                body = None
        args = kwargs = None
        if (
            isinstance(body, list | tuple)
            and len(body) >= 2
            and isinstance(body[0], list | tuple)
            and isinstance(body[1], dict)
        ):
            args, kwargs = list(body[0]), body[1]
        raw = getattr(message, "body", None)
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        error = error_of(exc)
        refused = headers.get(REFUSED_HEADER)
        task_id, task = headers.get("id"), headers.get("task")
        if isinstance(refused, dict):  # the transport could not read it: say why
            error = {"type": str(refused.get("type")), "message": str(refused.get("message"))}
            task_id, task = refused.get("id"), refused.get("task")
        entry = {
            "task_id": task_id if isinstance(task_id, str) else None,
            "task": task if isinstance(task, str) else None,
            "args": args,
            "kwargs": kwargs,
            "queue": _routing_key(message),
            "reason": reason,
            "error": error,
            "content_type": getattr(message, "content_type", None),
            "body": None if args is not None else (raw[:MAX_TEXT] if isinstance(raw, str) else None),
            "resubmittable": args is not None and isinstance(task, str) and reason != "unrunnable",
        }
        letters = dead_letters_for(self.app)
        try:
            try:
                letters.record(entry)
            except (ValueError, TypeError, RecursionError):  # arguments JSON cannot hold
                body_text = raw[:MAX_TEXT] if isinstance(raw, str) else None
                letters.record(
                    {**entry, "args": None, "kwargs": None, "body": body_text, "resubmittable": False}
                )
        except redis.RedisError:
            logger.error("could not dead-letter a refused message (%s)", reason, exc_info=True)


def _check_arguments(request: Any) -> None:
    """Refuse arguments of the wrong shape before a pool process calls ``task(*args,
    **kwargs)`` with them (a dict as args would pass its keys, for example)."""
    if not isinstance(request.id, str) or not request.id:
        raise InvalidTaskError(f"the task id must be a non-empty string, not {request.id!r:.100}")
    if not isinstance(request.args, list | tuple):
        raise InvalidTaskError(f"task args must be a list, not {type(request.args).__name__}")
    if not isinstance(request.kwargs, dict):
        raise InvalidTaskError(f"task kwargs must be an object, not {type(request.kwargs).__name__}")
    retries = request.request_dict.get("retries", 0)
    if retries is not None and not (type(retries) is int and retries >= 0):
        raise InvalidTaskError(f"retries must be a count, not {retries!r:.100}")
    limits = request.time_limits
    if not (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(limit is None or _is_duration(limit) for limit in limits)
    ):
        raise InvalidTaskError(f"timelimit must be [hard, soft] in seconds or null, not {limits!r:.100}")


def _is_duration(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < float("inf")


def _routing_key(message: Any) -> str | None:
    info = getattr(message, "delivery_info", None)
    key = info.get("routing_key") if isinstance(info, dict) else None
    return key if isinstance(key, str) else None
