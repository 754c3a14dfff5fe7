"""Durable revokes: revoked task ids kept in Redis, so every worker, including ones
started later, honours a revoke from any tool until it expires."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis
from celery import Celery, bootsteps

from .._compat import merge_revoked, set_revoke_expiry, wrap_control_command
from .._limits import MAX_TASK_ID_LENGTH
from .._options import options_of
from .._redis import clients_for

__all__ = ["DurableRevokes", "RevokeStore", "revoke_store_for"]

logger = logging.getLogger(__name__)


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
    """The revoke store configured on ``app``, on its state Redis unless ``client``."""
    options = options_of(app)
    return RevokeStore(
        client or clients_for(app).state(), options.key_prefix + "revoked", options.revoke_expires
    )


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
            set_revoke_expiry(self._store.expires)
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
            merge_revoked(task_id for task_id, _ in rows)
            self._last = rows[-1][1]

    def stop(self, c: Any) -> None:
        pass

    def shutdown(self, c: Any) -> None:
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        if self._store is not None:
            self._store.client.close()
