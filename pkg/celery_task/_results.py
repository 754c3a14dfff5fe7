"""Reading results and states (one MGET for many), waiting, and durable revokes.

Every state shown to a caller goes through :func:`public_state`, single reads and
batch reads alike: RECEIVED reads PENDING, REJECTED (a message refused and
dead-lettered) reads FAILURE.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

import celery.exceptions
from celery import Celery, states
from celery.result import AsyncResult

from ._errors import ResultTimeoutError, unreachable
from ._limits import check_task_id
from ._redis import RedisClients
from .worker import revoke_store_for

__all__ = ["RESULT_RECHECK_SECONDS", "TASK_STATES", "Results", "public_state", "status_of"]

#: A wait for a result reads the stored state at least this often (seconds), so a
#: missed pub/sub notification delays the answer by this much, never to the timeout.
RESULT_RECHECK_SECONDS = 2.0

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


def public_state(state: Any) -> str:
    """The status callers see for a stored state: RECEIVED reads PENDING, REJECTED
    (a message refused and dead-lettered) reads FAILURE; others as stored."""
    if state in (states.RECEIVED, None):
        return str(states.PENDING)
    if state == states.REJECTED:
        return str(states.FAILURE)
    return str(state)


def status_of(raw: bytes | None, backend: Any) -> str:
    """The public status in a stored result (JSON: only JSON results are accepted)."""
    if not raw:
        return str(states.PENDING)
    try:
        status = json.loads(raw)["status"]
    except (ValueError, KeyError, TypeError):
        status = backend.decode_result(raw).get("status")
    return public_state(status)


class Results:
    """Result reads and revokes for one app."""

    def __init__(self, app: Celery, redis_clients: RedisClients) -> None:
        self.app = app
        self.redis = redis_clients
        self.url = str(app.conf.broker_url)

    def _mget_backend(self) -> Any:
        """The backend if it is Redis (results readable with one MGET), else None."""
        backend = self.app.backend
        if getattr(backend, "client", None) is None or not hasattr(backend, "get_key_for_task"):
            return None
        return backend

    def get_result(self, task_id: str, timeout: float | None, propagate: bool) -> Any:
        """Block until the task is ready or ``timeout`` s pass (:class:`ResultTimeoutError`).

        Celery waits on the result's pub/sub notification only; a notification missed
        (seen under load) would hang the wait to its timeout although the result is
        stored, so the stored state is read again every :data:`RESULT_RECHECK_SECONDS`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            waiting = AsyncResult(task_id, app=self.app)
            try:
                return waiting.get(
                    timeout=RESULT_RECHECK_SECONDS if left is None else min(left, RESULT_RECHECK_SECONDS),
                    propagate=propagate,
                )
            except celery.exceptions.TimeoutError as exc:
                self.app.backend.remove_pending_result(waiting)
                stored = AsyncResult(task_id, app=self.app)
                if stored.ready():  # read from the store, not from a notification
                    return stored.get(propagate=propagate)
                if left is not None and left <= RESULT_RECHECK_SECONDS:
                    raise ResultTimeoutError(task_id, timeout) from exc

    def get_status(self, task_id: str) -> str:
        """The public status of one task."""
        return public_state(AsyncResult(task_id, app=self.app).state)

    def get_statuses(self, task_ids: Iterable[str]) -> dict[str, str]:
        """Public statuses of many tasks; on Redis one MGET decoding only ``status``."""
        ids = list(dict.fromkeys(task_ids))
        backend = self._mget_backend()
        if backend is None:
            return {
                task_id: public_state(meta.get("status"))
                for task_id, meta in self.get_task_metas(ids).items()
            }
        with unreachable("could not read task states", self.url):
            values = (
                backend.client.mget([backend.get_key_for_task(task_id) for task_id in ids]) if ids else []
            )
        return {task_id: status_of(raw, backend) for task_id, raw in zip(ids, values, strict=True)}

    def get_task_metas(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored metadata per id (``{"status": "PENDING"}`` when nothing is stored)."""
        if not task_ids:
            return {}
        backend = self._mget_backend()
        if backend is None:
            return {task_id: self.app.backend.get_task_meta(task_id) for task_id in task_ids}
        with unreachable("could not read task states", self.url):
            values = backend.client.mget([backend.get_key_for_task(task_id) for task_id in task_ids])
        return {
            task_id: backend.decode_result(raw) if raw else {"status": states.PENDING}
            for task_id, raw in zip(task_ids, values, strict=True)
        }

    def revoke(self, task_id: str, terminate: bool, signal: str) -> None:
        """Record the revoke in Redis (workers started later honour it), mark a task
        that has not run REVOKED, and tell running workers."""
        check_task_id(task_id)
        with unreachable(f"could not revoke {task_id}", self.url):
            revoke_store_for(self.app, self.redis.state()).add([task_id])
            state = self.app.backend.get_task_meta(task_id).get("status", states.PENDING)
            if state in (states.PENDING, states.RECEIVED, states.RETRY):
                self.app.backend.mark_as_revoked(task_id, reason="revoked")
            self.app.control.revoke(task_id, terminate=terminate, signal=signal)
