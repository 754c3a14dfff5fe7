"""The Celery configuration a :class:`CeleryClient` starts from: at-least-once delivery
on Redis, JSON only, bounded producer retries, events for Flower, the Redis-backed
schedule; plus the helpers that read what the caller passed (routes, modules, URLs).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from redis.backoff import NoBackoff
from redis.retry import Retry

from ._errors import InvalidRequestError
from ._limits import MAX_PRIORITY, MIN_PRIORITY
from ._redis import HEALTH_CHECK_INTERVAL, is_redis_url
from .worker import worker_conf

__all__ = [
    "PRODUCER_RETRY_POLICY",
    "THROUGHPUT_PROFILE",
    "available_modules",
    "default_conf",
    "normalise_routes",
    "state_redis_url",
]

logger = logging.getLogger(__name__)

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
PRODUCER_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.3, "interval_max": 0.5}


def default_conf(
    *,
    broker_url: str,
    state_url: str,
    task_default_queue: str,
    timezone: str,
) -> dict[str, Any]:
    """Celery settings for at-least-once delivery (the caller's settings override them)."""
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
        "task_publish_retry_policy": dict(PRODUCER_RETRY_POLICY),
        # Result backend calls made while sending (the result-channel SUBSCRIBE) retry
        # briefly too; Celery's default is 20 retries a second apart.
        "result_backend_transport_options": {"retry_policy": dict(PRODUCER_RETRY_POLICY)},
        "redis_socket_connect_timeout": 2.0,
        "redis_socket_timeout": 10.0,
        # A pooled connection idle this long is PINGed before use, so one that died
        # with a Redis restart is replaced instead of failing the next call.
        "redis_backend_health_check_interval": HEALTH_CHECK_INTERVAL,
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
            "health_check_interval": HEALTH_CHECK_INTERVAL,
            "retry": Retry(NoBackoff(), 1),
        },
        "redbeat_lock_timeout": 25,
    }
    conf.update(worker_conf(redis_broker=is_redis_url(broker_url)))
    return conf


def state_redis_url(broker_url: str, backend_url: str | None) -> str:
    """The Redis holding the schedule, revokes and dead letters: the backend's, else the broker's."""
    for url in (backend_url, broker_url):
        if is_redis_url(url):
            return str(url)
    raise InvalidRequestError(
        "a Redis URL is needed for the schedule and revoke store: give a redis:// broker "
        "or result backend, or pass tasksys_redis_url=...",
        field="backend_url",
    )


def available_modules(include: Iterable[str]) -> list[str]:
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
    """A route priority on the 0..9 scale (the seed's 10 means "highest")."""
    return max(MIN_PRIORITY, min(MAX_PRIORITY, int(value)))


def normalise_routes(task_routes: Mapping[str, Any] | None) -> dict[str, Any]:
    """Copy routes, clamping route priorities to 0..9 (the seed's 10 means "highest")."""
    routes: dict[str, Any] = {}
    for pattern, route in (task_routes or {}).items():
        if isinstance(route, Mapping):
            route = dict(route)
            if route.get("priority") is not None:
                route["priority"] = _clamp_priority(route["priority"])
        routes[pattern] = route
    return routes
