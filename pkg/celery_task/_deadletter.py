"""The dead-letter list: tasks that failed for good and messages no worker could run,
kept in Redis with their error so they can be inspected and re-submitted.

Celery on Redis keeps none of them: a failed task leaves only its result (which
expires), and a message for an unknown task or with an undecodable body is logged and
dropped. Entries live in a hash (id -> JSON) indexed by a sorted set (id -> time); the
oldest are trimmed beyond ``tasksys_dead_letter_max`` entries.
"""

from __future__ import annotations

import json
import logging
import time
import traceback as tb
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import redis
from celery import Celery, signals
from kombu.utils.uuid import uuid

from ._errors import DeadLetterNotFoundError, DeadLetterNotResubmittableError, unreachable
from ._options import options_of
from ._redis import clients_for
from ._request import TaskRequest
from ._validation import check_page

if TYPE_CHECKING:
    from ._publish import Publisher

__all__ = [
    "DEAD_LETTER_REASONS",
    "MAX_TEXT",
    "DeadLetterQueue",
    "DeadLetters",
    "connect_failure_recorder",
    "dead_letters_for",
    "record_task_failure",
]

logger = logging.getLogger(__name__)

#: Why an entry is in the list.
DEAD_LETTER_REASONS = ("failed", "unregistered", "invalid", "undecodable", "unrunnable")

#: Longest error message, traceback or raw body kept in an entry.
MAX_TEXT = 4000


class DeadLetters:
    """Read and write the dead-letter list of one app."""

    def __init__(self, client: redis.Redis, prefix: str, max_entries: int) -> None:
        self.client = client
        self.hash_key = f"{prefix}dead_letters"
        self.index_key = f"{prefix}dead_letters:index"
        self.max_entries = max_entries

    def record(self, entry: dict[str, Any]) -> str:
        """Store an entry (its ``id`` defaults to the task id); the oldest beyond the
        limit are dropped."""
        entry_id = str(entry.get("id") or entry.get("task_id") or uuid())
        entry = {**entry, "id": entry_id, "recorded_at": datetime.now(UTC).isoformat()}
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.hash_key, entry_id, json.dumps(entry, default=repr))
            pipe.zadd(self.index_key, {entry_id: time.time()})
            pipe.zrange(self.index_key, 0, -self.max_entries - 1)
            overflow = cast(list[Any], pipe.execute()[-1])
        if overflow:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.zrem(self.index_key, *overflow)
                pipe.hdel(self.hash_key, *overflow)
                pipe.execute()
        return entry_id

    def list(self, limit: int = 100, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """The total count and a page of entries, newest first."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zcard(self.index_key)
            pipe.zrevrange(self.index_key, offset, offset + limit - 1)
            total, ids = pipe.execute()
        if not ids:
            return int(total), []
        rows = cast(list[Any], self.client.hmget(self.hash_key, ids))
        return int(total), [json.loads(row) for row in rows if row]

    def get(self, entry_id: str) -> dict[str, Any] | None:
        """One entry, or ``None``."""
        raw = self.client.hget(self.hash_key, entry_id)
        return json.loads(cast(str, raw)) if raw else None

    def claim(self, entry_id: str) -> dict[str, Any] | None:
        """Take an entry out of the list atomically and return it: of several callers,
        exactly one gets the entry (the others ``None``), so it is re-submitted once."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hget(self.hash_key, entry_id)
            pipe.hdel(self.hash_key, entry_id)
            pipe.zscore(self.index_key, entry_id)
            pipe.zrem(self.index_key, entry_id)
            raw, deleted, score, _ = pipe.execute()
        if not deleted or not raw:
            return None
        entry = cast(dict[str, Any], json.loads(raw))
        entry["_score"] = score
        return entry

    def restore(self, entry: dict[str, Any]) -> None:
        """Put a claimed entry back as it was (its re-submission failed)."""
        entry = dict(entry)
        score = entry.pop("_score", None) or time.time()
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.hash_key, entry["id"], json.dumps(entry, default=repr))
            pipe.zadd(self.index_key, {entry["id"]: float(score)})
            pipe.execute()

    def remove(self, entry_id: str) -> bool:
        """Delete an entry; ``False`` if there was none."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.index_key, entry_id)
            pipe.hdel(self.hash_key, entry_id)
            removed, deleted = pipe.execute()
        return bool(removed or deleted)


def dead_letters_for(app: Celery, client: redis.Redis | None = None) -> DeadLetters:
    """The dead-letter list configured on ``app`` (on its state Redis unless ``client``)."""
    options = options_of(app)
    return DeadLetters(client or clients_for(app).state(), options.key_prefix, options.dead_letter_max)


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def error_of(exc: BaseException | None) -> dict[str, str] | None:
    """``{type, message}`` of an exception."""
    return None if exc is None else {"type": type(exc).__name__, "message": _text(str(exc))}


def record_task_failure(
    app: Celery,
    *,
    task_id: str,
    task_name: str,
    args: Any,
    kwargs: Any,
    exc: BaseException,
    traceback: Any,
    queue: str | None,
    retries: int | None,
) -> None:
    """Dead-letter a task that failed for good; a failure to record is logged, never raised."""
    try:
        formatted = "".join(tb.format_tb(traceback)) if traceback is not None else None
        dead_letters_for(app).record(
            {
                "task_id": task_id,
                "task": task_name,
                "args": args,
                "kwargs": kwargs,
                "queue": queue,
                "reason": "failed",
                "error": error_of(exc),
                "traceback": _text(formatted) if formatted else None,
                "retries": retries,
                "resubmittable": True,
            }
        )
    except redis.RedisError:
        logger.error("could not dead-letter failed task %s[%s]", task_name, task_id, exc_info=True)


def connect_failure_recorder(app: Celery) -> Callable[[], None]:
    """Dead-letter every final failure of ``app``'s tasks (``task_failure`` fires once
    retries are exhausted or for errors that are not retried, also for hard time limits);
    returns the function that disconnects the receiver again."""

    def on_failure(
        sender: Any = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        args: Any = None,
        kwargs: Any = None,
        traceback: Any = None,
        **_: Any,
    ) -> None:
        if sender is None or getattr(sender, "app", None) is not app or task_id is None or exception is None:
            return
        request = getattr(sender, "request", None)
        same = request is not None and getattr(request, "id", None) == task_id
        delivery = (getattr(request, "delivery_info", None) or {}) if same else {}
        record_task_failure(
            app,
            task_id=task_id,
            task_name=sender.name,
            args=args,
            kwargs=kwargs,
            exc=exception,
            traceback=traceback,
            queue=delivery.get("routing_key"),
            retries=getattr(request, "retries", None) if same else None,
        )

    signals.task_failure.connect(on_failure, weak=False)
    return lambda: signals.task_failure.disconnect(on_failure)


class DeadLetterQueue:
    """What a caller does with the list: read a page or an entry, re-submit, delete."""

    def __init__(self, app: Celery, publisher: Publisher) -> None:
        self.app = app
        self.publisher = publisher
        self.url = str(app.conf.broker_url)

    def page(self, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        """The total and one page, newest first."""
        check_page(limit, offset)
        with unreachable("could not read the dead-letter list", self.url):
            return dead_letters_for(self.app).list(limit=limit, offset=offset)

    def get(self, entry_id: str) -> dict[str, Any]:
        """One entry, or :class:`DeadLetterNotFoundError`."""
        with unreachable("could not read the dead-letter list", self.url):
            entry = dead_letters_for(self.app).get(entry_id)
        if entry is None:
            raise DeadLetterNotFoundError(entry_id)
        return entry

    def resubmit(self, entry_id: str) -> str:
        """Claim the entry atomically (one of concurrent callers wins), send its task
        again under its id, and put the entry back if the send fails; the task id."""
        entry = self.get(entry_id)
        if not entry.get("resubmittable") or not entry.get("task"):
            raise DeadLetterNotResubmittableError(entry_id, f"it was recorded as {entry.get('reason')!r}")
        request = self.publisher.validator.validated(
            TaskRequest(
                entry["task"],
                entry.get("args") or [],
                entry.get("kwargs") or {},
                entry.get("task_id") or None,
                entry.get("queue") or None,
            )
        )
        store = dead_letters_for(self.app)
        with unreachable("could not update the dead-letter list", self.url):
            claimed = store.claim(entry_id)
        if claimed is None:
            raise DeadLetterNotFoundError(entry_id)
        try:
            return self.publisher.republish(request)
        except BaseException:
            with unreachable("could not restore the dead-letter entry", self.url):
                store.restore(claimed)
            raise

    def delete(self, entry_id: str) -> bool:
        """Remove an entry; ``False`` if there was none."""
        with unreachable("could not update the dead-letter list", self.url):
            return dead_letters_for(self.app).remove(entry_id)
