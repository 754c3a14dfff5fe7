"""The installation point: the configuration keys and the app changes a worker needs,
so the client sets them in two calls and never names a worker class itself."""

from __future__ import annotations

from typing import Any

from celery import Celery

from .._redis import HEALTH_CHECK_INTERVAL
from .backend import TimedRedisBackend
from .consumer import Consumer
from .dedupe import DedupeRelease
from .events import EventBatching
from .heartbeat import UnackedHeartbeat
from .history import TaskHistory
from .hooks import WorkerHooks
from .revokes import DurableRevokes
from .timers import TimerCompaction
from .transport import PRIORITY_STEPS, TRANSPORT_PATH

__all__ = ["BACKEND_PATH", "CONSUMER_PATH", "CONSUMER_STEPS", "install", "worker_conf"]

#: The ``worker_consumer`` value naming :class:`Consumer`.
CONSUMER_PATH = f"{Consumer.__module__}:{Consumer.__qualname__}"
#: The class Celery's loader builds for ``redis://`` and ``rediss://`` result backends.
BACKEND_PATH = f"{TimedRedisBackend.__module__}:{TimedRedisBackend.__qualname__}"
#: Consumer bootsteps added to every app (each one is a no-op where it does not apply).
CONSUMER_STEPS = (UnackedHeartbeat, DurableRevokes, EventBatching, TimerCompaction)


#: Seconds the unacked-restore lock outlives a worker that died holding it.
UNACKED_MUTEX_EXPIRE = 5


def worker_conf(redis_broker: bool) -> dict[str, Any]:
    """The Celery configuration keys of the worker side: its consumer, and on a Redis
    broker (``redis_broker``) our transport with its options."""
    conf: dict[str, Any] = {"worker_consumer": CONSUMER_PATH}
    if redis_broker:
        # Our class, with connections that still report a redis:// URL (Flower reads it).
        conf["broker_transport"] = TRANSPORT_PATH
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
            # kombu holds this lock while it restores, for up to 300 s by default: a
            # worker killed inside a restore stopped every restore for five minutes.
            # Restores are WATCH transactions per message, so two at once are safe.
            "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE,
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
            # kombu's default of 10 per channel pool made the 11th of 50 threads that
            # submit at once fail with "Too many connections"; 100 covers a thread pool.
            "max_connections": 100,
            "health_check_interval": HEALTH_CHECK_INTERVAL,
        }
    return conf


def install(app: Celery) -> WorkerHooks:
    """Add the worker's consumer bootsteps and, for Redis results, TimedRedisBackend
    (which also records start time and runtime) to ``app``, task history (recorded
    only where ``tasksys_history`` is on when the worker starts) and the release of
    dedupe keys; its lifecycle hooks."""
    backends = {"redis": BACKEND_PATH, "rediss": BACKEND_PATH}
    app.loader.override_backends = {**app.loader.override_backends, **backends}
    for step in CONSUMER_STEPS:
        app.steps["consumer"].add(step)
    hooks = WorkerHooks(app)
    hooks.attach_history(TaskHistory(app))
    hooks.attach_dedupe(DedupeRelease(app))
    return hooks
