"""Worker-side machinery: everything that runs only inside ``celery worker`` processes
(producers never start its threads). One bootstep or concern per module:

- ``config``: :func:`worker_conf` (the worker's configuration keys) and :func:`install`
  (bootsteps, result backend, hooks), the two calls the client makes.
- ``hooks``: :class:`WorkerHooks`, startup/shutdown hooks per task process, and its signal receivers.
- ``logs``: :class:`EscapingFormatter`, worker and beat logs with control characters escaped.
- ``revokes``: :class:`RevokeStore` in Redis and the :class:`DurableRevokes` consumer step.
- ``heartbeat``: :class:`UnackedHeartbeat` (held messages stay held) and the legacy index sweep.
- ``events``: :class:`EventBatching`, task events published in batches on a short timer.
- ``timers``: :class:`TimerCompaction`, cancelled timer entries dropped from the event loop.
- ``consumer``: the :class:`Consumer` that dead-letters messages it cannot run and keeps going.
- ``transport``: :class:`PriorityRedisTransport` and its channel (9 is the highest priority).
- ``qos``: the channel's unacked index, one atomic script per delivery, ack and requeue.
- ``messages``: :class:`SafeMessage`, unreadable messages handed on as refused stand-ins.
- ``backend``: :class:`TimedRedisBackend`, results with start time and runtime, stored atomically.
- ``pool``: :class:`AsyncioPool`, many ``async def`` tasks at once on the process's loop.
- ``history``: :class:`TaskHistory`, lifecycle records buffered and appended to the history stream.
- ``dedupe``: :class:`DedupeRelease`, dedupe keys released when their task is done or revoked.

Private Celery and kombu names these modules need are reached through ``.._compat``.
"""

from .config import install, worker_conf
from .hooks import WorkerHooks
from .revokes import RevokeStore, revoke_store_for
from .transport import (
    PRIORITY_STEPS,
    STOCK_PRIORITY_STEPS,
    TRANSPORT_PATH,
    PriorityRedisTransport,
    redis_priority_queue_keys,
)

__all__ = [
    "PRIORITY_STEPS",
    "STOCK_PRIORITY_STEPS",
    "TRANSPORT_PATH",
    "PriorityRedisTransport",
    "RevokeStore",
    "WorkerHooks",
    "install",
    "redis_priority_queue_keys",
    "revoke_store_for",
    "worker_conf",
]
