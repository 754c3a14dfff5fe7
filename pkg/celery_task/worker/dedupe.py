"""Deduplicated submits, worker side: a task's dedupe key is released when it succeeds,
fails for good or is revoked (expired included), never between retries.

The key travels in the message header ``tasksys_dedupe`` (retries keep it, as Celery
copies custom headers into the retried message), so tasks sent without one cost no
Redis call. A failure the worker's main process announces without the task's context
(a hard time limit) looks the key up by task id. A Redis error only logs: the key then
expires with its TTL.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery import signals as celery_signals

from .._dedupe import DEDUPE_HEADER, Deduplicator

__all__ = ["DedupeRelease", "dedupe_key_of"]

logger = logging.getLogger(__name__)


def dedupe_key_of(request: Any) -> str | None:
    """The dedupe key a task request (Celery's ``Context``) carries, if any."""
    if request is None:
        return None
    headers = getattr(request, "headers", None)
    value = headers.get(DEDUPE_HEADER) if isinstance(headers, dict) else None
    if value is None:
        value = getattr(request, DEDUPE_HEADER, None)
    return value if isinstance(value, str) and value else None


class DedupeRelease:
    """Releases the dedupe keys of one app's tasks from Celery's task signals."""

    def __init__(self, app: Celery, dedupe: Deduplicator | None = None) -> None:
        self.app = app
        self.dedupe = dedupe or Deduplicator(app)
        self._connected = False

    def _receivers(self) -> list[tuple[Any, Any]]:
        return [
            (celery_signals.task_success, self._on_success),
            (celery_signals.task_failure, self._on_failure),
            (celery_signals.task_revoked, self._on_revoked),
        ]

    def connect(self) -> None:
        """Start releasing in this worker (WorkerHooks calls it when the worker starts);
        a no-op where the broker cannot hold dedupe keys (not Redis)."""
        if self._connected or not self.dedupe.available:
            return
        for signal, receiver in self._receivers():
            signal.connect(receiver, weak=False)
        self._connected = True

    def disconnect(self) -> None:
        """Stop receiving signals (safe twice)."""
        for signal, receiver in self._receivers():
            signal.disconnect(receiver)
        self._connected = False

    def _ours(self, task: Any) -> bool:
        return getattr(task, "app", None) is self.app

    def _release(self, task_id: Any, key: str | None) -> None:
        if not isinstance(task_id, str) or not task_id:
            return
        try:
            self.dedupe.release(task_id, key)
        except Exception as exc:  # a signal receiver must never fail the task
            logger.warning(
                "could not release the dedupe key of task %s (%r); it expires with its TTL", task_id, exc
            )

    def _on_success(self, sender: Any = None, **_: Any) -> None:
        if not self._ours(sender):
            return
        request = sender.request
        key = dedupe_key_of(request)
        if key is not None:
            self._release(request.id, key)

    def _on_failure(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        if not self._ours(sender):
            return
        request = sender.request
        if getattr(request, "id", None) == task_id:
            key = dedupe_key_of(request)
            if key is not None:
                self._release(task_id, key)
            return
        self._release(task_id, None)  # announced without the task's context (hard limits)

    def _on_revoked(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        if request is None or not (self._ours(sender) or self._ours(getattr(request, "task", None))):
            return
        key = dedupe_key_of(request)  # the revoked message's own headers
        if key is not None:
            self._release(getattr(request, "id", None), key)
