"""``CeleryClient``: a Celery app configured for at-least-once delivery on Redis, with
one 0-9 priority scale, a dynamic Redis-backed beat schedule and worker lifecycle hooks.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import logging
import math
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, cast
from urllib.parse import urlsplit

import celery.exceptions
import kombu.exceptions
import redis
import redis.asyncio
from celery import Celery, states
from celery.canvas import Signature
from celery.canvas import chain as celery_chain
from celery.canvas import chord as celery_chord
from celery.canvas import group as celery_group
from celery.result import AsyncResult, GroupResult
from kombu.utils.json import dumps as _kombu_json_dumps
from kombu.utils.url import maybe_sanitize_url
from kombu.utils.uuid import uuid
from redbeat.schedulers import ensure_conf, get_redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._async import AsyncPublisher, AsyncResults, SyncPublisher
from ._beat import ScheduleEntry
from ._deadletter import connect_failure_recorder, dead_letters_for
from ._errors import (
    BrokerUnavailableError,
    DeadLetterNotFoundError,
    DeadLetterNotResubmittableError,
    InvalidArgumentsError,
    InvalidPriorityError,
    InvalidRequestError,
    PeriodicTaskConflictError,
    PeriodicTaskNotFoundError,
    ResultTimeoutError,
    StoreFullError,
    TaskIdInUseError,
    UnknownTaskError,
)
from ._fastpath import MessageFactory, fast_path_supports, pipeline_commands
from ._limits import (
    MAX_DELAY,
    MAX_EXPIRES,
    check_entry_name,
    check_json_value,
    check_queue_name,
    check_seconds,
    check_task_id,
    check_time,
)
from ._options import DEFAULT_MAX_ARGUMENT_BYTES, Options, configure, options_of
from ._request import TaskRequest, json_text
from ._schedules import describe_schedule, parse_schedule
from ._transport import PRIORITY_STEPS, redis_priority_queue_keys
from ._worker import (
    DurableRevokes,
    EventBatching,
    TimerCompaction,
    UnackedHeartbeat,
    WorkerHooks,
    revoke_store_for,
)

__all__ = [
    "CeleryClient",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "TASK_STATES",
    "THROUGHPUT_PROFILE",
    "public_state",
]

logger = logging.getLogger(__name__)

MIN_PRIORITY = 0
MAX_PRIORITY = 9

#: States ``get_status`` reports (Celery's own plus ``PROGRESS``).
TASK_STATES: tuple[str, ...] = (
    "PENDING",
    "STARTED",
    "PROGRESS",
    "RETRY",
    "SUCCESS",
    "FAILURE",
    "REVOKED",
)

_REDIS_SCHEMES = ("redis", "rediss")
_BROKER_ERRORS: tuple[type[BaseException], ...] = (
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)
#: Configuration for many short tasks, to pass as ``CeleryClient(..., **THROUGHPUT_PROFILE)``.
#: Still at-least-once (late acks, requeue on worker loss); what it gives up: each
#: process reserves 8 messages (a later high-priority task waits behind them), workers
#: send no task events (Flower shows workers, not tasks), and results keep only the
#: state and value (no name, args, worker or queue).
THROUGHPUT_PROFILE: dict[str, Any] = {
    "worker_prefetch_multiplier": 8,
    "worker_send_task_events": False,
    "task_send_sent_event": False,
    "result_extended": False,
}

#: Bounded retries for producers: about one second in all, then a clear error.
_PRODUCER_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.3, "interval_max": 0.5}
#: Seconds a pooled Redis connection may idle before it is checked ahead of its next use.
_HEALTH_CHECK_INTERVAL = 10
#: Most entries one page of :meth:`CeleryClient.periodic_tasks_page` returns.
MAX_PAGE_SIZE = 1000
#: Largest offset a page may start at (Redis ranges are 64-bit; no list is this long).
MAX_OFFSET = 10**9

# Refuse a caller-supplied task id that is known (its result is stored, it is revoked,
# or another submit claimed it), else claim it for ``ARGV[2]`` seconds. KEYS: claim,
# result, revoked set; ARGV: id, ttl (0 = no expiry), oldest live revoke time,
# "1" to look at the result key (it lives on this server).
_CLAIM_SCRIPT = """
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
local revoked = redis.call('ZSCORE', KEYS[3], ARGV[1])
if revoked and tonumber(revoked) > tonumber(ARGV[3]) then return 3 end
local claimed
if tonumber(ARGV[2]) > 0 then
  claimed = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2])
else
  claimed = redis.call('SET', KEYS[1], '1', 'NX')
end
if claimed then return 1 end
return 4
"""
_CLAIM_REFUSALS = {
    2: "it has a stored result",
    3: "it was revoked",
    4: "a task with that id was already submitted",
}


def kombu_json_dumps(value: Any) -> str:
    """Serialise as Celery's JSON serializer would (datetimes, UUIDs, Decimals allowed)."""
    return str(_kombu_json_dumps(value))  # type: ignore[no-untyped-call]


def _scheme(url: str | None) -> str:
    return urlsplit(url).scheme if url else ""


def _default_conf(
    *,
    broker_url: str,
    backend_url: str | None,
    state_url: str,
    task_default_queue: str,
    timezone: str,
) -> dict[str, Any]:
    conf: dict[str, Any] = {
        # JSON only: never pickle on the wire.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        # At-least-once: ack after the result is stored, requeue if the process dies,
        # skip a redelivered task that already succeeded.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_deduplicate_successful_tasks": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_track_started": True,
        "result_extended": True,
        "result_expires": timedelta(days=1),
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_connection_timeout": 2.0,
        # The producer never hangs: a few quick publish retries, then a clear error.
        "task_publish_retry_policy": dict(_PRODUCER_RETRY_POLICY),
        # Result backend calls made while sending (the result-channel SUBSCRIBE) retry
        # briefly too; Celery's default is 20 retries a second apart.
        "result_backend_transport_options": {"retry_policy": dict(_PRODUCER_RETRY_POLICY)},
        "redis_socket_connect_timeout": 2.0,
        "redis_socket_timeout": 10.0,
        # A pooled connection idle this long is PINGed before use, so one that died
        # with a Redis restart is replaced instead of failing the next call.
        "redis_backend_health_check_interval": _HEALTH_CHECK_INTERVAL,
        "task_default_queue": task_default_queue,
        "task_queue_max_priority": MAX_PRIORITY,
        "timezone": timezone,
        "enable_utc": True,
        # Events on, so Flower and `celery events` see tasks and workers.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # Pool children run startup hooks (DB/Redis connections) before signalling ready.
        "worker_proc_alive_timeout": 30.0,
        # Dynamic schedule in Redis: changes seen within ~1 s; a standby beat takes over
        # ~25 s after the lock holder dies (RedBeat's default would be 25 minutes).
        "beat_scheduler": "pkg.celery_task._beat:RedisScheduler",
        "beat_max_loop_interval": 1.0,
        "redbeat_redis_url": state_url,
        # Schedule-store calls from producers and the API fail fast (one reconnect, then
        # an error); beat alone rides out a Redis restart, retrying each call this long.
        "redbeat_redis_options": {
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
            "health_check_interval": _HEALTH_CHECK_INTERVAL,
            "retry": Retry(NoBackoff(), 1),
        },
        "redbeat_lock_timeout": 25,
        "worker_consumer": "pkg.celery_task._worker:Consumer",
    }
    if _scheme(broker_url) in _REDIS_SCHEMES:
        # Our class, with connections that still report a redis:// URL (Flower reads it).
        conf["broker_transport"] = "pkg.celery_task._transport:PriorityRedisTransport"
        conf["broker_transport_options"] = {
            "priority_steps": PRIORITY_STEPS,
            # A message a dead worker held is back in the queue within visibility
            # timeout + restore interval (~35 s); live workers refresh theirs
            # (UnackedHeartbeat), so long and ETA tasks are never handed out twice.
            "visibility_timeout": 30,
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            # Our own unacked index: stock Celery workers on the same Redis keep kombu's
            # default keys (1 h timeout, no heartbeat), which our 30 s sweep must never
            # restore; LegacyUnackedSweep restores that index as a stock worker would.
            "unacked_key": "tasksys:unacked",
            "unacked_index_key": "tasksys:unacked_index",
            "unacked_mutex_key": "tasksys:unacked_mutex",
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
            "health_check_interval": _HEALTH_CHECK_INTERVAL,
        }
    return conf


def _state_redis_url(broker_url: str, backend_url: str | None) -> str:
    for url in (backend_url, broker_url):
        if url and _scheme(url) in _REDIS_SCHEMES:
            return url
    raise InvalidRequestError(
        "a Redis URL is needed for the schedule and revoke store: give a redis:// broker "
        "or result backend, or pass tasksys_redis_url=...",
        field="backend_url",
    )


def _available_modules(include: Iterable[str]) -> list[str]:
    """Keep the modules that exist; skip (with a warning naming it) those that do not."""
    found = []
    for name in include:
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            logger.warning("task module %r does not exist; skipping it", name)
            continue
        found.append(name)
    return found


def _clamp_priority(value: Any) -> int:
    return max(MIN_PRIORITY, min(MAX_PRIORITY, int(value)))


def _normalise_routes(task_routes: Mapping[str, Any] | None) -> dict[str, Any]:
    """Copy routes, clamping route priorities to 0..9 (the seed's 10 means "highest")."""
    routes: dict[str, Any] = {}
    for pattern, route in (task_routes or {}).items():
        if isinstance(route, Mapping):
            route = dict(route)
            if route.get("priority") is not None:
                route["priority"] = _clamp_priority(route["priority"])
        routes[pattern] = route
    return routes


def check_priority(priority: Any) -> int | None:
    """Validate a priority on the 0 (lowest) .. 9 (highest) scale."""
    if priority is None:
        return None
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not (MIN_PRIORITY <= priority <= MAX_PRIORITY)
    ):
        raise InvalidPriorityError(
            f"priority must be an integer from {MIN_PRIORITY} (lowest) to "
            f"{MAX_PRIORITY} (highest); got {priority!r}",
            field="priority",
        )
    return priority


def check_json_arguments(
    args: Sequence[Any], kwargs: Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES
) -> None:
    """Refuse task arguments that the JSON serializer cannot send (naming the first
    one), that nest too deeply, hold NaN/Infinity, or whose JSON exceeds ``max_bytes``."""
    check_json_value(args, field="args", members=True)
    check_json_value(kwargs, field="kwargs", members=True)
    for key in kwargs:
        if not isinstance(key, str):
            raise InvalidArgumentsError(
                f"kwargs keys must be strings (they are argument names); got {key!r}", field="kwargs"
            )
    try:
        size = len(json_text([list(args), dict(kwargs)]))
    except (TypeError, ValueError):
        size = -1
    if size > max_bytes:
        raise InvalidArgumentsError(
            f"args and kwargs take {size} bytes as JSON; at most {max_bytes} are accepted: "
            "pass ids of stored data instead of the data",
            field="args",
        )
    if size >= 0:
        return
    for label, value in [
        *((f"args[{i}]", v) for i, v in enumerate(args)),
        *((f"kwargs[{k!r}]", v) for k, v in kwargs.items()),
    ]:
        try:
            kombu_json_dumps(value)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentsError(
                f"{label} of type {type(value).__name__} cannot be sent as JSON ({exc}); "
                "pass JSON values (str, int, float, bool, None, list, dict) such as ids",
                field="args" if label.startswith("args") else "kwargs",
            ) from exc
    raise InvalidArgumentsError("task arguments cannot be sent as JSON", field="args")


class CeleryClient:
    """A configured Celery app plus the operations a service needs around it."""

    def __init__(
        self,
        app_name: str,
        broker_url: str,
        backend_url: str | None = None,
        include: Sequence[str] = (),
        task_routes: Mapping[str, Any] | None = None,
        task_default_queue: str = "default",
        timezone: str = "Asia/Shanghai",
        beat_schedule: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        app: Celery | None = None,
        **extra_conf: Any,
    ) -> None:
        self.app_name = app_name
        self.broker_url = broker_url
        self.backend_url = backend_url
        self.include: tuple[str, ...] = tuple(_available_modules(include))
        self.task_routes = _normalise_routes(task_routes)
        self.task_default_queue = task_default_queue
        self.timezone = timezone
        self.beat_schedule: dict[str, dict[str, Any]] = {
            name: dict(entry) for name, entry in (beat_schedule or {}).items()
        }
        for name, entry in self.beat_schedule.items():
            check_json_arguments(entry.get("args", ()), entry.get("kwargs", {}))
            if not entry.get("task"):
                raise InvalidRequestError(f"static entry {name!r} has no task", field="beat_schedule")

        ours, extra_conf = Options.split(extra_conf)
        state_url = ours.pop("redis_url", None) or _state_redis_url(broker_url, backend_url)
        options = Options(redis_url=state_url, **ours)
        conf = _default_conf(
            broker_url=broker_url,
            backend_url=backend_url,
            state_url=state_url,
            task_default_queue=task_default_queue,
            timezone=timezone,
        )
        conf.update(task_routes=self.task_routes, beat_schedule=self.beat_schedule)
        transport_options = extra_conf.pop("broker_transport_options", None) or {}
        conf["broker_transport_options"] = {**conf.get("broker_transport_options", {}), **transport_options}
        conf.update(extra_conf)
        if app is None:
            app = Celery(
                app_name,
                broker=broker_url,
                backend=backend_url,
                include=list(self.include),
                task_cls="pkg.celery_task._task:BaseTask",
            )
        else:
            app.conf.update(broker_url=broker_url, result_backend=backend_url, include=list(self.include))
        app.conf.update(conf)
        configure(app, options)
        # Redis results also record start time and runtime (TimedRedisBackend).
        app.loader.override_backends = {
            **app.loader.override_backends,
            "redis": "pkg.celery_task._backend:TimedRedisBackend",
            "rediss": "pkg.celery_task._backend:TimedRedisBackend",
        }
        app.steps["consumer"].add(UnackedHeartbeat)
        app.steps["consumer"].add(DurableRevokes)
        app.steps["consumer"].add(EventBatching)
        app.steps["consumer"].add(TimerCompaction)
        ensure_conf(app)  # RedBeat's key names, read once from the conf above
        self.app: Celery = app
        self._hooks = WorkerHooks(app)
        connect_failure_recorder(app)
        self._registry_loaded = False
        self._closed = False
        self._lock = threading.Lock()
        self._publisher: SyncPublisher | None = None
        self._route_cache: dict[str, str] = {}
        self._signatures_cache: dict[str, inspect.Signature] = {}
        self._publishers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncPublisher] = (
            weakref.WeakKeyDictionary()
        )
        self._results: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncResults] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"CeleryClient(app_name={self.app_name!r}, broker_url={maybe_sanitize_url(self.broker_url)!r})"

    # -- task registry ---------------------------------------------------------------

    def load_tasks(self) -> list[str]:
        """Import the ``include`` modules so task names can be checked before sending.
        A module that fails to import raises; returns the registered task names."""
        self.app.loader.import_default_modules()
        self.app.finalize()
        self._registry_loaded = True
        return sorted(name for name in self.app.tasks if not name.startswith("celery."))

    def public_tasks(self) -> list[str]:
        """Tasks marked ``public=True`` in code: the ones outside callers (the HTTP API)
        may submit or schedule. Celery's own ``celery.*`` tasks never are."""
        return sorted(
            name
            for name, task in self.app.tasks.items()
            if getattr(task, "public", False) is True and not name.startswith("celery.")
        )

    def is_public(self, task_name: str) -> bool:
        """True if ``task_name`` is registered and marked public."""
        task = self.app.tasks.get(task_name)
        return (
            task is not None
            and getattr(task, "public", False) is True
            and not task_name.startswith("celery.")
        )

    def resolve_queue(self, task_name: str, queue: str | None = None) -> str:
        """The queue a task would be sent to: ``queue`` if given, else its route
        (remembered per task name: the client's routes are a fixed mapping)."""
        if queue:
            return queue
        resolved = self._route_cache.get(task_name)
        if resolved is None:
            target = self.app.amqp.router.route({}, task_name).get("queue")
            resolved = self._route_cache[task_name] = str(
                getattr(target, "name", target) or self.task_default_queue
            )
        return resolved

    def _check_task_name(self, task_name: Any) -> str:
        if not isinstance(task_name, str) or not task_name.strip():
            raise InvalidRequestError(
                f"task name must be a non-empty string; got {task_name!r}", field="task"
            )
        if self._registry_loaded and task_name not in self.app.tasks:
            known = sorted(n for n in self.app.tasks if not n.startswith("celery."))
            raise UnknownTaskError(task_name, known=known)
        return task_name

    @cached_property
    def _max_argument_bytes(self) -> int:
        return options_of(self.app).max_argument_bytes

    def _check_signature(self, task_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """With the registry loaded, refuse arguments the task's own parameters cannot
        take (the worker would fail with a message counting the bound ``self``)."""
        if not self._registry_loaded:
            return
        signature = self._signatures_cache.get(task_name)
        if signature is None:
            task = self.app.tasks.get(task_name)
            if task is None or not getattr(task, "typing", True):  # typing=False: any arguments
                return
            try:
                signature = inspect.signature(task.run)
            except (TypeError, ValueError):
                return
            self._signatures_cache[task_name] = signature
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArgumentsError(
                f"{task_name} takes ({_parameters(signature)}); got {len(args)} positional "
                f"argument(s) and keyword(s) {sorted(kwargs)}: {exc}",
                field="args",
            ) from None

    # -- sending ---------------------------------------------------------------------

    def _send_options(
        self,
        *,
        task_id: Any,
        queue: Any,
        priority: Any,
        countdown: Any,
        eta: Any,
        expires: Any,
        options: dict[str, Any],
    ) -> dict[str, Any]:
        if task_id is not None:
            check_task_id(task_id)
        if queue is not None:
            self.check_queue(queue)
        if options.get("queue") is not None:
            self.check_queue(options["queue"])
        check_priority(priority if priority is not None else options.get("priority"))
        if countdown is not None and eta is not None:
            raise InvalidRequestError("give countdown or eta, not both", field="countdown")
        now = datetime.now(UTC)
        if countdown is not None:
            check_seconds(countdown, field="countdown", minimum=0, maximum=MAX_DELAY.total_seconds())
        if eta is not None:
            eta = check_time(eta, field="eta", tz=self.app.timezone, latest=now + MAX_DELAY)
        if isinstance(expires, datetime):
            expires = check_time(expires, field="expires", tz=self.app.timezone, latest=now + MAX_EXPIRES)
        elif expires is not None:
            check_seconds(
                expires,
                field="expires",
                minimum=0,
                maximum=MAX_EXPIRES.total_seconds(),
                inclusive_minimum=False,
            )
        self._check_time_limits(options)
        sent = dict(options)
        for key, value in (
            ("task_id", task_id),
            ("queue", queue),
            ("priority", priority),
            ("countdown", countdown),
            ("eta", eta),
            ("expires", expires),
        ):
            if value is not None:
                sent[key] = value
        return sent

    @cached_property
    def _reserved_queue_prefixes(self) -> tuple[str, ...]:
        """Prefixes of the Redis keys the system itself uses: result, group and chord
        keys, kombu's bindings, our unacked index and kombu's default one (stock workers
        and the legacy sweep use it), the schedule and this package's state."""
        conf = self.app.conf
        transport = conf.broker_transport_options or {}
        prefixes = {
            "celery-task-meta-",
            "celery-taskset-meta-",
            "chord-unlock",
            "_kombu",
            "unacked",
            "celeryev",
            str(transport.get("unacked_key") or "unacked"),
            str(transport.get("unacked_index_key") or "unacked_index"),
            str(transport.get("unacked_mutex_key") or "unacked_mutex"),
            options_of(self.app).key_prefix,
            str(ensure_conf(self.app).key_prefix),
        }
        backend = self.app.backend
        for name in ("task_keyprefix", "group_keyprefix", "chord_keyprefix"):
            value = getattr(backend, name, None)
            if value:
                prefixes.add(value.decode() if isinstance(value, bytes) else str(value))
        return tuple(sorted(p for p in prefixes if p))

    def check_queue(self, queue: Any, *, field: str = "queue") -> str:
        """A queue name this client will send to: 1-200 of ``A-Z a-z 0-9 _ . : -``, and
        never a name the system's own Redis keys start with."""
        name = check_queue_name(queue, self._reserved_queue_prefixes, field=field)
        if name.endswith(".pidbox"):
            raise InvalidRequestError(
                f"{field} {name!r} is reserved: names ending in '.pidbox' are Celery's remote-control queues",
                field=field,
            )
        return name

    def _check_time_limits(self, options: Mapping[str, Any]) -> None:
        """Celery arms the hard limit only once the soft one has passed: a hard limit at
        or below the soft limit in force would not apply when asked, so refuse it."""
        for name in ("soft_time_limit", "time_limit"):
            value = options.get(name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise InvalidRequestError(
                    f"{name} must be a number of seconds > 0; got {value!r}", field=name
                )
        hard = options.get("time_limit")
        soft = options.get("soft_time_limit", self.app.conf.task_soft_time_limit)
        if hard is not None and soft is not None and soft >= hard:
            raise InvalidRequestError(
                f"time_limit {hard} s must exceed the soft time limit in force ({soft} s); "
                "pass a smaller soft_time_limit too",
                field="time_limit",
            )

    def submit(
        self,
        task_name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send a task by name and return at once. Routes apply unless ``queue`` is
        given; ``priority`` is 0 (lowest) to 9 (highest) on every broker."""
        request = self._validated(
            TaskRequest(
                task_name,
                args or (),
                kwargs or {},
                task_id,
                queue,
                priority,
                countdown,
                eta,
                expires,
                options,
            )
        )
        with self._claimed([request]):
            return self.app.AsyncResult(self._publish(request))

    def _publish(self, request: TaskRequest) -> str:
        """Send one validated request (fast path on Redis, else ``send_task``); its id."""
        if not self._fast_path_ok([request]):
            return self._send_validated(request)
        with self._unreachable(f"could not send task {request.task_name!r}"):
            publisher = self._sync_publisher()
            with publisher.lock:
                task_id, commands = publisher.factory.build(request)
            with publisher.channel.conn_or_acquire() as client, client.pipeline(transaction=True) as pipe:
                for name, args in commands:
                    getattr(pipe, name)(*args)
                pipe.execute()
        return task_id

    # -- caller-supplied task ids are idempotency keys --------------------------------

    def _claim_key(self, task_id: str) -> str:
        return f"{options_of(self.app).key_prefix}task_id:{task_id}"

    @cached_property
    def _results_on_state_redis(self) -> bool:
        """Results live on the Redis that holds the claims, so one script checks both."""
        return bool(
            hasattr(self.app.backend, "get_key_for_task")
            and self.backend_url
            and options_of(self.app).redis_url == self.backend_url
        )

    def _claim_ttl(self, options: Mapping[str, Any]) -> int:
        """How long a claim outlives the submit: the task's delay plus the result TTL
        (with a day of slack for queueing), or 0 (forever) if results never expire."""
        expires = self.app.conf.result_expires
        keep = expires.total_seconds() if isinstance(expires, timedelta) else float(expires or 0)
        if keep <= 0:
            return 0
        delay = float(options.get("countdown") or 0)
        eta = options.get("eta")
        if isinstance(eta, datetime):
            delay = max(delay, (eta - datetime.now(UTC)).total_seconds())
        return int(delay + max(keep, 86400) + 86400)

    def _claim_call(self, request: TaskRequest) -> tuple[list[Any], list[Any]]:
        task_id = request.options["task_id"]
        result_key = self.app.backend.get_key_for_task(task_id) if self._results_on_state_redis else ""
        floor = time.time() - options_of(self.app).revoke_expires
        keys = [self._claim_key(task_id), result_key, f"{options_of(self.app).key_prefix}revoked"]
        look_at_result = "1" if self._results_on_state_redis else "0"
        args = [task_id, self._claim_ttl(request.options), floor, look_at_result]
        return keys, args

    @staticmethod
    def _caller_ids(requests: Sequence[TaskRequest]) -> list[TaskRequest]:
        claiming = [r for r in requests if r.options.get("task_id")]
        ids = [r.options["task_id"] for r in claiming]
        if len(set(ids)) != len(ids):
            raise InvalidRequestError("task ids must be unique within one call", field="task_id")
        return claiming

    def _claim_ids(self, requests: Sequence[TaskRequest]) -> list[str]:
        """Claim the caller-supplied id of every request, atomically per id, or none of
        them (:class:`TaskIdInUseError` for the first that is known); the claimed ids."""
        claiming = self._caller_ids(requests)
        if not claiming:
            return []
        client = self._state_redis()
        script = self._claim_script
        with self._unreachable("could not check task ids"):
            if not self._results_on_state_redis:
                for request in claiming:
                    self._refuse_if_stored(request.options["task_id"])
            with client.pipeline(transaction=False) as pipe:
                for request in claiming:
                    keys, args = self._claim_call(request)
                    script(keys=keys, args=args, client=pipe)
                answers = pipe.execute()
        return self._settle_claims([r.options["task_id"] for r in claiming], answers)

    @cached_property
    def _claim_script(self) -> Any:
        """The claim script, registered once (each call names the client it runs on)."""
        return self._state_redis().register_script(_CLAIM_SCRIPT)

    def _refuse_if_stored(self, task_id: str) -> None:
        if self.app.backend.get_task_meta(task_id).get("status", states.PENDING) != states.PENDING:
            raise TaskIdInUseError(task_id, _CLAIM_REFUSALS[2])

    def _settle_claims(self, ids: list[str], answers: Sequence[Any]) -> list[str]:
        claimed = [task_id for task_id, answer in zip(ids, answers, strict=True) if int(answer) == 1]
        refused = [(task_id, int(a)) for task_id, a in zip(ids, answers, strict=True) if int(a) != 1]
        if refused:
            self._release_ids(claimed)
            task_id, answer = refused[0]
            raise TaskIdInUseError(task_id, _CLAIM_REFUSALS.get(answer, "it is known"))
        return claimed

    async def _claim_ids_async(self, requests: Sequence[TaskRequest]) -> list[str]:
        """:meth:`_claim_ids` on redis.asyncio (in a thread when the claims live
        elsewhere than the results)."""
        claiming = self._caller_ids(requests)
        if not claiming:
            return []
        if not self._results_on_state_redis:
            return await asyncio.to_thread(self._claim_ids, claiming)
        script = self._async_results().redis.register_script(_CLAIM_SCRIPT)
        answers = []
        with self._unreachable("could not check task ids"):
            for request in claiming:
                keys, args = self._claim_call(request)
                answers.append(await script(keys=keys, args=args))
        return self._settle_claims([r.options["task_id"] for r in claiming], answers)

    def _release_ids(self, task_ids: Sequence[str]) -> None:
        """Give claims back after a send failed, so the caller can retry with the id."""
        if not task_ids:
            return
        try:
            self._state_redis().delete(*(self._claim_key(task_id) for task_id in task_ids))
        except redis.RedisError as exc:
            logger.error(
                "could not release the claim on task id(s) %s after a failed send (%s); "
                "they stay refused until the claim expires",
                ", ".join(task_ids[:10]),
                exc,
            )

    @contextmanager
    def _claimed(self, requests: Sequence[TaskRequest]) -> Iterator[list[str]]:
        """Claim the requests' caller-supplied ids for the block; released if it fails."""
        claimed = self._claim_ids(requests)
        try:
            yield claimed
        except BaseException:
            self._release_ids(claimed)
            raise

    def _sync_publisher(self) -> SyncPublisher:
        """The long-lived channel and message templates :meth:`submit` builds with."""
        with self._lock:
            if self._publisher is None:
                self._publisher = SyncPublisher(self.app)
            return self._publisher

    def _validated(self, request: TaskRequest) -> TaskRequest:
        """Check one request; the result carries the options ``send_task`` takes."""
        self._check_task_name(request.task_name)
        args_list = list(request.args or ())
        kwargs_dict = dict(request.kwargs or {})
        check_json_arguments(args_list, kwargs_dict, max_bytes=self._max_argument_bytes)
        self._check_signature(request.task_name, args_list, kwargs_dict)
        sent = self._send_options(
            task_id=request.task_id,
            queue=request.queue,
            priority=request.priority,
            countdown=request.countdown,
            eta=request.eta,
            expires=request.expires,
            options=dict(request.options or {}),
        )
        return TaskRequest(request.task_name, args_list, kwargs_dict, options=sent)

    @cached_property
    def _redis_broker(self) -> bool:
        """Redis broker without a global key prefix: the fast paths apply."""
        transport_options = self.app.conf.broker_transport_options or {}
        return _scheme(self.broker_url) in _REDIS_SCHEMES and not transport_options.get("global_keyprefix")

    def _fast_path_ok(self, requests: Sequence[TaskRequest]) -> bool:
        return self._redis_broker and all(fast_path_supports(self.app, r) for r in requests)

    def submit_many(
        self, requests: Iterable[TaskRequest | Mapping[str, Any]], *, chunk_size: int = 1000
    ) -> list[str]:
        """Send many tasks at once: the same messages as :meth:`submit`, written in one
        pipelined MULTI/EXEC per ``chunk_size`` tasks. Every request is validated
        before anything is sent. Returns the task ids in request order.

        On a broker error, :class:`BrokerUnavailableError` has ``sent_ids``: the tasks
        of the chunks that were written (the failing chunk's tasks were not)."""
        if chunk_size < 1:
            raise InvalidRequestError("chunk_size must be at least 1", field="chunk_size")
        validated = [self._validated(r if isinstance(r, TaskRequest) else TaskRequest(**r)) for r in requests]
        claimed = self._claim_ids(validated)
        sent_ids: list[str] = []
        try:
            return self._send_many(validated, chunk_size, sent_ids)
        except BaseException:
            sent = set(sent_ids)
            self._release_ids([task_id for task_id in claimed if task_id not in sent])
            raise

    def _send_many(self, validated: list[TaskRequest], chunk_size: int, sent_ids: list[str]) -> list[str]:
        if not self._fast_path_ok(validated):
            for request in validated:
                sent_ids.append(self._send_validated(request))
            return sent_ids
        try:
            with self._unreachable("could not send tasks"), self.app.producer_or_acquire() as producer:
                factory = MessageFactory(self.app, producer)
                for start in range(0, len(validated), chunk_size):
                    chunk_ids: list[str] = []
                    commands: list[tuple[str, tuple[Any, ...]]] = []
                    for request in validated[start : start + chunk_size]:
                        task_id, task_commands = factory.build(request)
                        chunk_ids.append(task_id)
                        commands += task_commands
                    with (
                        producer.channel.conn_or_acquire() as client,
                        client.pipeline(transaction=True) as pipe,
                    ):
                        for name, args in pipeline_commands(commands):
                            getattr(pipe, name)(*args)
                        pipe.execute()
                    sent_ids.extend(chunk_ids)
        except BrokerUnavailableError as exc:
            exc.sent_ids = sent_ids
            raise
        return sent_ids

    def _send_validated(self, request: TaskRequest) -> str:
        with self._unreachable(f"could not send task {request.task_name!r}"):
            result = self.app.send_task(request.task_name, request.args, request.kwargs, **request.options)
        return str(result.id)

    async def submit_async(
        self,
        task_name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        **options: Any,
    ) -> str:
        """:meth:`submit` for ``async`` code: the same message, written with redis.asyncio
        (one MULTI/EXEC) so the event loop never blocks. Returns the task id."""
        request = self._validated(
            TaskRequest(
                task_name,
                args or (),
                kwargs or {},
                task_id,
                queue,
                priority,
                countdown,
                eta,
                expires,
                options,
            )
        )
        return await self._send_async(request, claim=True)

    async def _send_async(self, request: TaskRequest, *, claim: bool) -> str:
        claimed = await self._claim_ids_async([request]) if claim else []
        try:
            return await self._publish_async(request)
        except BaseException:
            if claimed:
                await asyncio.to_thread(self._release_ids, claimed)
            raise

    async def _publish_async(self, request: TaskRequest) -> str:
        if not self._fast_path_ok([request]):
            return await asyncio.to_thread(self._send_validated, request)
        loop = asyncio.get_running_loop()
        publisher = self._publishers.get(loop)
        if publisher is None:
            with self._unreachable(f"could not send task {request.task_name!r}"):
                publisher = await asyncio.to_thread(AsyncPublisher, self)
            publisher = self._publishers.setdefault(loop, publisher)
        return await publisher.send(request)

    async def submit_and_wait_async(
        self,
        task_name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float,
        task_id: str | None = None,
        **options: Any,
    ) -> tuple[str, dict[str, Any]]:
        """Send a task and wait up to ``timeout`` s for it, listening for its result
        before it is sent; its id and stored metadata (whatever the state then)."""
        request = self._validated(TaskRequest(task_name, args or (), kwargs or {}, task_id, **options))
        claim = task_id is not None
        task_id = request.options.get("task_id") or uuid()
        request = TaskRequest(
            request.task_name, request.args, request.kwargs, options={**request.options, "task_id": task_id}
        )
        if _scheme(self.backend_url) not in _REDIS_SCHEMES:
            await self._send_async(request, claim=claim)
            return task_id, await self.wait_async(task_id, timeout)
        meta = await self._async_results().wait(
            task_id, timeout, submit=lambda: self._send_async(request, claim=claim)
        )
        return task_id, meta

    def _async_results(self) -> AsyncResults:
        loop = asyncio.get_running_loop()
        results = self._results.get(loop)
        if results is None:
            results = self._results[loop] = AsyncResults(self)
        return results

    async def get_task_metas_async(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """:meth:`get_task_metas` for ``async`` code (one MGET on redis.asyncio)."""
        if not task_ids:
            return {}
        if (
            not hasattr(self.app.backend, "get_key_for_task")
            or _scheme(self.backend_url) not in _REDIS_SCHEMES
        ):
            return await asyncio.to_thread(self.get_task_metas, task_ids)
        return await self._async_results().metas(task_ids)

    async def get_statuses_async(self, task_ids: Iterable[str]) -> dict[str, str]:
        """:meth:`get_statuses` for ``async`` code."""
        metas = await self.get_task_metas_async(list(dict.fromkeys(task_ids)))
        return {task_id: public_state(meta.get("status")) for task_id, meta in metas.items()}

    async def wait_async(self, task_id: str, timeout: float) -> dict[str, Any]:
        """Wait up to ``timeout`` s for the task to finish without blocking the loop;
        its stored metadata (whatever the state is when the time is up)."""
        if _scheme(self.backend_url) not in _REDIS_SCHEMES:
            return (await asyncio.to_thread(self.get_task_metas, [task_id]))[task_id]
        return await self._async_results().wait(task_id, timeout)

    async def aclose(self) -> None:
        """Close the redis.asyncio connections the async methods opened in this loop."""
        loop = asyncio.get_running_loop()
        for registry in (self._publishers, self._results):
            side = registry.pop(loop, None)
            if side is not None:
                await side.aclose()

    @contextmanager
    def _unreachable(self, what: str) -> Iterator[None]:
        """Turn "cannot reach the broker/backend" into :class:`BrokerUnavailableError`."""
        try:
            yield
        except _BROKER_ERRORS as exc:
            raise self._broker_error(what, exc) from exc
        except redis.exceptions.ResponseError as exc:
            if not _refuses_writes(exc):
                raise
            if isinstance(exc, redis.exceptions.ReadOnlyError):
                raise self._broker_error(what, exc) from exc
            raise StoreFullError(
                f"{what}: Redis at {maybe_sanitize_url(self.broker_url)} is out of memory and "
                f"refuses writes ({type(exc).__name__}: {exc}); retry once memory is available"
            ) from exc
        except RuntimeError as exc:
            # Celery's result consumer gives up with a RuntimeError caused by the
            # connection error; the next call reconnects, so this is not fatal.
            if isinstance(exc.__cause__, _BROKER_ERRORS):
                raise self._broker_error(what, exc.__cause__) from exc
            raise

    def _broker_error(self, what: str, exc: BaseException) -> BrokerUnavailableError:
        return BrokerUnavailableError(
            f"{what}: broker or result backend unreachable at "
            f"{maybe_sanitize_url(self.broker_url)} ({type(exc).__name__}: {exc})"
        )

    def signature(
        self,
        task_name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """Build a signature by name for :meth:`chain`, :meth:`group` and :meth:`chord`."""
        self._check_task_name(task_name)
        args_list = list(args or ())
        kwargs_dict = dict(kwargs or {})
        check_json_arguments(args_list, kwargs_dict)
        check_priority(options.get("priority"))
        return self.app.signature(task_name, args=args_list, kwargs=kwargs_dict, **options)

    def _signatures(self, signatures: Iterable[Signature | str]) -> list[Signature]:
        sigs = [self.signature(s) if isinstance(s, str) else s for s in signatures]
        if not sigs:
            raise InvalidRequestError("a workflow needs at least one task", field="steps")
        for sig in sigs:
            if not isinstance(sig, Signature):
                raise InvalidRequestError(
                    f"expected a signature or task name, got {type(sig).__name__}", field="steps"
                )
        return sigs

    def chain(self, *signatures: Signature | str, **options: Any) -> AsyncResult:
        """Run tasks one after another, each getting the previous result; returns the last."""
        workflow = celery_chain(*self._signatures(signatures), app=self.app)
        with self._unreachable("could not send chain"):
            return workflow.apply_async(**options)

    def group(self, *signatures: Signature | str, **options: Any) -> GroupResult:
        """Run tasks in parallel; the group result is saved so it can be restored by id."""
        workflow = celery_group(*self._signatures(signatures), app=self.app)
        with self._unreachable("could not send group"):
            result = workflow.apply_async(**options)
            result.save()
        return cast(GroupResult, result)

    def chord(self, header: Iterable[Signature | str], body: Signature | str, **options: Any) -> AsyncResult:
        """Run ``header`` in parallel, then ``body`` with the list of their results."""
        (body_sig,) = self._signatures([body])
        workflow = celery_chord(self._signatures(header), body_sig, app=self.app)
        with self._unreachable("could not send chord"):
            return workflow.apply_async(**options)

    # -- results ---------------------------------------------------------------------

    def get_result(self, task_id: str, timeout: float | None = None, propagate: bool = True) -> Any:
        """Block until the task is ready (or ``timeout`` s pass: :class:`ResultTimeoutError`).
        With ``propagate=False`` a failed task's exception is returned, not raised."""
        result = AsyncResult(task_id, app=self.app)
        try:
            return result.get(timeout=timeout, propagate=propagate)
        except celery.exceptions.TimeoutError as exc:
            raise ResultTimeoutError(task_id, timeout) from exc

    def get_status(self, task_id: str) -> str:
        """PENDING, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE or REVOKED."""
        return public_state(AsyncResult(task_id, app=self.app).state)

    def get_statuses(self, task_ids: Iterable[str]) -> dict[str, str]:
        """Statuses of many tasks in one round trip to Redis (one MGET); only the
        ``status`` field of each stored result is decoded."""
        ids = list(dict.fromkeys(task_ids))
        backend = self.app.backend
        client = getattr(backend, "client", None)
        if client is None or not hasattr(backend, "get_key_for_task"):
            return {
                task_id: public_state(meta.get("status"))
                for task_id, meta in self.get_task_metas(ids).items()
            }
        with self._unreachable("could not read task states"):
            values = client.mget([backend.get_key_for_task(task_id) for task_id in ids]) if ids else []
        return {task_id: _status_of(raw, backend) for task_id, raw in zip(ids, values, strict=True)}

    def get_task_metas(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored result metadata per id (``{"status": "PENDING"}`` when nothing is stored)."""
        backend = self.app.backend
        if not task_ids:
            return {}
        client = getattr(backend, "client", None)
        if client is None or not hasattr(backend, "get_key_for_task"):
            return {tid: backend.get_task_meta(tid) for tid in task_ids}
        with self._unreachable("could not read task states"):
            values = client.mget([backend.get_key_for_task(tid) for tid in task_ids])
        metas: dict[str, dict[str, Any]] = {}
        for task_id, raw in zip(task_ids, values, strict=True):
            metas[task_id] = backend.decode_result(raw) if raw else {"status": states.PENDING}
        return metas

    def revoke(self, task_id: str, terminate: bool = False, signal: str = "SIGTERM") -> None:
        """Revoke a task: a queued (or countdown/ETA) task never runs; with
        ``terminate=True`` a running one is stopped. The revoke is kept in Redis, so
        workers that start later honour it too."""
        check_task_id(task_id)
        with self._unreachable(f"could not revoke {task_id}"):
            revoke_store_for(self.app, self._state_redis()).add([task_id])
            state = self.app.backend.get_task_meta(task_id).get("status", states.PENDING)
            if state in (states.PENDING, states.RECEIVED, states.RETRY):
                self.app.backend.mark_as_revoked(task_id, reason="revoked")
            self.app.control.revoke(task_id, terminate=terminate, signal=signal)

    # -- periodic tasks --------------------------------------------------------------

    def _state_redis(self) -> redis.Redis:
        return cast(redis.Redis, get_redis(self.app))

    def _entry_key(self, name: str) -> str:
        """The Redis key of a user entry; a name that could address the scheduler's own
        keys (``redbeat::lock``, ``::schedule``, ``::statics``) never gets this far."""
        return cast(str, ScheduleEntry.generate_key(self.app, check_entry_name(name)))

    def _static_names(self) -> set[str]:
        stored = self._state_redis().smembers(ensure_conf(self.app).statics_key)
        return set(cast(Iterable[str], stored)) | set(self.beat_schedule)

    def add_periodic_task(
        self,
        task_name: str,
        schedule_type: str,
        schedule_value: Any,
        *,
        name: str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
        options: Mapping[str, Any] | None = None,
        enabled: bool = True,
        replace: bool = True,
    ) -> str:
        """Create or replace a schedule entry in Redis; a running beat picks it up within
        about a second. With ``replace=False`` an existing entry is a conflict. Returns
        the entry name; the run history of a replaced entry is kept."""
        entry = self._build_entry(
            task_name,
            schedule_type,
            schedule_value,
            name=name,
            args=args,
            kwargs=kwargs,
            queue=queue,
            options=options,
            enabled=enabled,
        )
        self._store_entries([entry], replace=replace)
        return str(entry.name)

    def add_periodic_tasks(self, entries: Iterable[Mapping[str, Any]], *, replace: bool = True) -> list[str]:
        """Create or replace many entries (each a mapping of :meth:`add_periodic_task`'s
        arguments), all validated first and written in pipelined batches."""
        built = [self._build_entry(**spec) for spec in entries]
        names = [str(entry.name) for entry in built]
        if len(set(names)) != len(names):
            raise InvalidRequestError("entry names must be unique within one call", field="name")
        self._store_entries(built, replace=replace)
        return names

    def _build_entry(
        self,
        task_name: str,
        schedule_type: str,
        schedule_value: Any,
        *,
        name: str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
        options: Mapping[str, Any] | None = None,
        enabled: bool = True,
    ) -> ScheduleEntry:
        """Validate one entry's arguments; nothing is written."""
        if not self._registry_loaded:
            self.load_tasks()  # a typo in a task name is refused before it is stored
        self._check_task_name(task_name)
        sched = parse_schedule(schedule_type, schedule_value, tz=self.app.timezone, now=self.app.now())
        args_list = list(args or ())
        kwargs_dict = dict(kwargs or {})
        check_json_arguments(args_list, kwargs_dict, max_bytes=self._max_argument_bytes)
        self._check_signature(task_name, args_list, kwargs_dict)
        opts = dict(options or {})
        check_priority(opts.get("priority"))
        if queue is not None:
            opts["queue"] = self.check_queue(queue)
        elif opts.get("queue") is not None:
            self.check_queue(opts["queue"], field="options.queue")
        try:
            kombu_json_dumps(opts)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentsError(f"options cannot be stored as JSON: {exc}", field="options") from exc
        if name is None:
            name = f"{task_name}:{schedule_type}:{describe_schedule(sched, timezone=self.timezone).value}"
        check_entry_name(name)
        if not isinstance(enabled, bool):
            raise InvalidRequestError(f"enabled must be true or false; got {enabled!r}", field="enabled")
        return ScheduleEntry(
            name=name,
            task=task_name,
            schedule=sched,
            args=args_list,
            kwargs=kwargs_dict,
            options=opts,
            enabled=enabled,
            app=self.app,
        )

    def _store_entries(
        self, entries: Sequence[ScheduleEntry], *, replace: bool, chunk_size: int = 1000
    ) -> None:
        with self._unreachable("could not store periodic tasks"):
            statics = self._static_names()
            client = self._state_redis()
            for entry in entries:
                if entry.name in statics:
                    raise PeriodicTaskConflictError(
                        entry.name, "it is a static entry; it can only be enabled or disabled"
                    )
            if not replace:
                with client.pipeline(transaction=False) as pipe:
                    for entry in entries:
                        pipe.exists(entry.key)
                    exists = pipe.execute()
                taken = [entry.name for entry, found in zip(entries, exists, strict=True) if found]
                if taken:
                    raise PeriodicTaskConflictError(
                        taken[0], "an entry of that name exists; update it instead"
                    )
            for start in range(0, len(entries), chunk_size):
                with client.pipeline(transaction=False) as pipe:
                    for entry in entries[start : start + chunk_size]:
                        entry.save(pipe)
                    pipe.execute()

    def remove_periodic_task(self, name: str) -> bool:
        """Delete an entry; ``False`` if there was none. It never fires again."""
        with self._unreachable("could not remove periodic task"):
            if name in self._static_names():
                raise PeriodicTaskConflictError(name, "it is a static entry; disable it instead")
            client = self._state_redis()
            key = self._entry_key(name)
            with client.pipeline() as pipe:
                pipe.zrem(ensure_conf(self.app).schedule_key, key)
                pipe.delete(key)
                removed, deleted = pipe.execute()
        return bool(removed or deleted)

    def _load_entry(self, name: str) -> ScheduleEntry:
        try:
            return ScheduleEntry.from_key(self._entry_key(name), app=self.app)
        except KeyError:
            raise PeriodicTaskNotFoundError(name) from None

    def _set_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        with self._unreachable("could not update periodic task"):
            entry = self._load_entry(name)
            entry.enabled = enabled
            entry.save()
            statics = self._static_names()
        return self._describe_entry(entry, statics)

    def enable_periodic_task(self, name: str) -> dict[str, Any]:
        """Turn an entry back on; it resumes on its schedule."""
        return self._set_enabled(name, True)

    def disable_periodic_task(self, name: str) -> dict[str, Any]:
        """Turn an entry off without deleting it; beat stops sending it."""
        return self._set_enabled(name, False)

    def get_periodic_task(self, name: str) -> dict[str, Any]:
        """One entry (see :meth:`list_periodic_tasks`), or :class:`PeriodicTaskNotFoundError`."""
        with self._unreachable("could not read periodic task"):
            entry = self._load_entry(name)
            statics = self._static_names()
        return self._describe_entry(entry, statics)

    def list_periodic_tasks(self) -> list[dict[str, Any]]:
        """Every entry, static and dynamic, sorted by name: name, task, schedule (type,
        value, description), args, kwargs, queue, options, enabled, last_run_at,
        next_run_at, total_run_count, static. See :meth:`periodic_tasks_page` for pages."""
        return self._periodic_page(None, 0)[1]

    def periodic_tasks_page(self, limit: int = 100, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """One page of :meth:`list_periodic_tasks` (sorted by name) and the total count;
        only the page's entries are read and decoded."""
        _check_page(limit, offset)
        return self._periodic_page(limit, offset)

    def _periodic_page(self, limit: int | None, offset: int) -> tuple[int, list[dict[str, Any]]]:
        conf = ensure_conf(self.app)
        prefix = str(conf.key_prefix)
        with self._unreachable("could not list periodic tasks"):
            client = self._state_redis()
            keys = cast(list[str], client.zrange(conf.schedule_key, 0, -1))
            # Only user and static entries: never the scheduler's own ``prefix:`` keys.
            own = prefix + ":"
            names = sorted(k[len(prefix) :] for k in keys if k.startswith(prefix) and not k.startswith(own))
            page = names[offset : None if limit is None else offset + limit]
            with client.pipeline(transaction=False) as pipe:
                for name in page:
                    pipe.hmget(prefix + name, "definition", "meta")
                rows = pipe.execute(raise_on_error=False)
            statics = self._static_names()
        entries = []
        for name, row in zip(page, rows, strict=True):
            if isinstance(row, Exception):
                logger.warning("periodic entry %r is unreadable (%s); skipping it", name, row)
                continue
            definition, meta = row
            if not definition:
                continue
            try:
                fields = ScheduleEntry.decode_definition(definition)
                decoded_meta = ScheduleEntry.decode_meta(meta)
                fields.update(decoded_meta)
                entry = ScheduleEntry(app=self.app, **fields)
            except (ValueError, TypeError) as exc:
                logger.warning("periodic entry %r cannot be decoded (%s); skipping it", name, exc)
                continue
            entry.last_run_at = decoded_meta.get("last_run_at")
            entries.append(self._describe_entry(entry, statics))
        return len(names), entries

    def _describe_entry(self, entry: ScheduleEntry, statics: set[str]) -> dict[str, Any]:
        info = describe_schedule(entry.schedule, timezone=self.timezone)
        next_run = entry.due_at if entry.enabled else None
        return {
            "name": entry.name,
            "task": entry.task,
            "schedule": {"type": info.type, "value": info.value, "description": info.description},
            "args": list(entry.args or ()),
            "kwargs": dict(entry.kwargs or {}),
            "queue": (entry.options or {}).get("queue"),
            "options": dict(entry.options or {}),
            "enabled": bool(entry.enabled),
            "last_run_at": entry.last_run_at.isoformat() if entry.last_run_at else None,
            "next_run_at": next_run.isoformat() if next_run else None,
            "total_run_count": int(entry.total_run_count or 0),
            "static": entry.name in statics,
        }

    # -- dead letters ----------------------------------------------------------------

    def dead_letters(self, limit: int = 100, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """Tasks that failed for good and messages workers refused, newest first: the
        total and one page. Each entry has id, task_id, task, args, kwargs, queue,
        reason, error, traceback, recorded_at and whether it can be re-submitted."""
        _check_page(limit, offset)
        with self._unreachable("could not read the dead-letter list"):
            return dead_letters_for(self.app, self._state_redis()).list(limit=limit, offset=offset)

    def get_dead_letter(self, entry_id: str) -> dict[str, Any]:
        """One entry, or :class:`DeadLetterNotFoundError`."""
        with self._unreachable("could not read the dead-letter list"):
            entry = dead_letters_for(self.app, self._state_redis()).get(entry_id)
        if entry is None:
            raise DeadLetterNotFoundError(entry_id)
        return entry

    def resubmit_dead_letter(self, entry_id: str) -> str:
        """Send the entry's task again (same id, args, kwargs and queue; the old result
        is replaced) and remove the entry; the task id. The entry is claimed atomically:
        of concurrent calls exactly one sends, the others get
        :class:`DeadLetterNotFoundError`."""
        entry = self.get_dead_letter(entry_id)
        if not entry.get("resubmittable") or not entry.get("task"):
            raise DeadLetterNotResubmittableError(entry_id, f"it was recorded as {entry.get('reason')!r}")
        request = self._validated(
            TaskRequest(
                entry["task"],
                entry.get("args") or [],
                entry.get("kwargs") or {},
                entry.get("task_id") or None,
                entry.get("queue") or None,
            )
        )
        store = dead_letters_for(self.app, self._state_redis())
        with self._unreachable("could not update the dead-letter list"):
            claimed = store.claim(entry_id)
        if claimed is None:
            raise DeadLetterNotFoundError(entry_id)
        try:
            return self._republish(request)
        except BaseException:
            with self._unreachable("could not restore the dead-letter entry"):
                store.restore(claimed)
            raise

    def _republish(self, request: TaskRequest) -> str:
        """Send a task again under its own id: the system's re-publish, not a caller's
        new submit, so the id is not refused; its old result is dropped first, so the
        status reads PENDING until the new run stores one."""
        task_id = request.options.get("task_id")
        if task_id:
            with self._unreachable(f"could not re-submit {task_id}"), suppress(NotImplementedError):
                self.app.backend.forget(task_id)
                ttl = self._claim_ttl(request.options)
                self._state_redis().set(self._claim_key(task_id), "1", ex=ttl or None)
        return self._publish(request)

    def delete_dead_letter(self, entry_id: str) -> bool:
        """Remove an entry; ``False`` if there was none."""
        with self._unreachable("could not update the dead-letter list"):
            return dead_letters_for(self.app, self._state_redis()).remove(entry_id)

    # -- workers and queues ----------------------------------------------------------

    def register_worker_hooks(self, on_startup: Any = None, on_shutdown: Any = None) -> None:
        """Register sync or ``async`` callables run in each task-executing worker
        process: ``on_startup`` before its first task, ``on_shutdown`` on warm shutdown."""
        self._hooks.register(on_startup, on_shutdown)

    def known_queues(self) -> list[str]:
        """The default queue, every queue named by a route, and those configured in
        ``tasksys_known_queues``: the queues outside callers (the HTTP API) may name."""
        names = {self.task_default_queue, *options_of(self.app).known_queues}
        for route in self.task_routes.values():
            if isinstance(route, Mapping) and isinstance(route.get("queue"), str):
                names.add(route["queue"])
        return sorted(names)

    def queue_lengths(self, queues: Iterable[str] | None = None) -> dict[str, int]:
        """Messages waiting per queue (priority sub-queues summed), not counting
        messages workers have already reserved."""
        names = list(queues) if queues is not None else self.known_queues()
        with self._unreachable("could not read queue lengths"), self._broker_connection() as conn:
            channel = conn.default_channel
            if _scheme(self.broker_url) in _REDIS_SCHEMES:
                client = channel.client
                with client.pipeline(transaction=False) as pipe:
                    for name in names:
                        for key in redis_priority_queue_keys(name, channel.sep):
                            pipe.llen(key)
                    counts = pipe.execute()
                per_queue = len(PRIORITY_STEPS)
                return {
                    name: int(sum(counts[i * per_queue : (i + 1) * per_queue]))
                    for i, name in enumerate(names)
                }
            lengths = {}
            for name in names:
                try:
                    lengths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except conn.channel_errors:
                    lengths[name] = 0
                    channel = conn.channel()
            return lengths

    @contextmanager
    def _broker_connection(self, timeout: float = 2.0) -> Iterator[Any]:
        """A broker connection that is established once, quickly, or fails (kombu's own
        retry loop would wait ``broker_connection_timeout`` first)."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=timeout)
            yield conn

    def ping(self, timeout: float = 1.0, *, workers: bool = True) -> dict[str, Any]:
        """Reachability of broker and result backend (``{ok, latency_ms, error}`` each),
        and the names of the workers that answered within ``timeout``."""
        report: dict[str, Any] = {
            "broker": self._check(self._ping_broker, timeout),
            "backend": self._check(self._ping_backend, timeout),
        }
        if workers:
            answered: list[str] = []
            if report["broker"]["ok"]:
                try:
                    replies = self.app.control.ping(timeout=timeout) or []
                    answered = sorted(name for reply in replies for name in reply)
                except _BROKER_ERRORS as exc:
                    logger.warning("worker ping failed: %s", exc)
            report["workers"] = answered
        return report

    @staticmethod
    def _check(probe: Any, timeout: float) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            probe(timeout)
        except Exception as exc:  # a health probe reports any failure, it never raises
            return {"ok": False, "latency_ms": None, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2), "error": None}

    def _ping_broker(self, timeout: float) -> None:
        with self._broker_connection(timeout) as conn:
            if _scheme(self.broker_url) in _REDIS_SCHEMES:
                conn.default_channel.client.ping()

    def _ping_backend(self, timeout: float) -> None:
        client = getattr(self.app.backend, "client", None)
        if client is not None:
            client.ping()

    def close(self) -> None:
        """Release connections; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._publisher is not None:
            self._publisher.close()
        self.app.close()


def _parameters(signature: inspect.Signature) -> str:
    """``x, y, *rest, z=1`` without annotations: what a caller of the task may pass."""
    parts = []
    for parameter in signature.parameters.values():
        shown = parameter.name
        if parameter.kind is parameter.VAR_POSITIONAL:
            shown = "*" + shown
        elif parameter.kind is parameter.VAR_KEYWORD:
            shown = "**" + shown
        elif parameter.default is not parameter.empty:
            shown += "=" + repr(parameter.default)
        parts.append(shown)
    return ", ".join(parts)


def _check_page(limit: Any, offset: Any) -> None:
    """``limit`` 1..1000 and ``offset`` 0..10**9, as every list endpoint takes them."""
    for name, value, low, high in (("limit", limit, 1, MAX_PAGE_SIZE), ("offset", offset, 0, MAX_OFFSET)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidRequestError(
                f"{name} must be an integer from {low} to {high}; got {value!r}", field=name
            )


def _refuses_writes(exc: redis.exceptions.ResponseError) -> bool:
    """Redis answered but will not write: out of memory (``OOM``, also when it aborted a
    MULTI/EXEC for it), or a read-only replica after a failover."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError | redis.exceptions.ReadOnlyError):
        return True
    text = str(exc)
    return text.startswith(("OOM", "READONLY")) or (
        isinstance(exc, redis.exceptions.ExecAbortError) and "OOM" in text
    )


def _status_of(raw: bytes | None, backend: Any) -> str:
    """The status in a stored result (JSON: the client only accepts JSON results)."""
    if not raw:
        return str(states.PENDING)
    try:
        status = json.loads(raw)["status"]
    except (ValueError, KeyError, TypeError):
        status = backend.decode_result(raw).get("status")
    return public_state(status)


def public_state(state: Any) -> str:
    """The status callers see for a stored state: RECEIVED reads PENDING, REJECTED
    (a message refused and dead-lettered) reads FAILURE; others as stored."""
    if state in (states.RECEIVED, None):
        return str(states.PENDING)
    if state == states.REJECTED:
        return str(states.FAILURE)
    return str(state)
