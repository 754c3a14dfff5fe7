"""Task history's producer record: a ``sent`` record for each task a client publishes,
appended to the history stream (``<key_prefix>history``) where the workers append the
rest of each task's lifecycle, so ``sent_at`` is known.

Where the stream and the queues share one Redis (the default), the record is one more
command of the same MULTI/EXEC or script that writes the message: it exists exactly
when the message does, for no extra round trip. Otherwise it follows the send in a
call of its own, and a failure there only logs (the task was sent).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from celery import Celery

from ._options import Options, options_of
from ._redis import clients_for

__all__ = ["encode_record", "run_commands", "sent_after", "sent_after_needed", "sent_commands", "stream_key"]

logger = logging.getLogger(__name__)

Command = tuple[str, tuple[Any, ...]]

#: One encoder for every record (``json.dumps`` with options builds one per call).
encode_record = json.JSONEncoder(default=repr, ensure_ascii=False).encode


def stream_key(options: Options) -> str:
    """The history stream's key for these options."""
    return f"{options.key_prefix}history"


def _xadd(options: Options, task_id: str, task_name: str) -> tuple[Any, ...]:
    record = {"type": "sent", "task_id": task_id, "task": task_name, "at": time.time(), "pid": os.getpid()}
    maxlen = str(options.history_stream_maxlen)
    return (stream_key(options), "MAXLEN", "~", maxlen, "*", "r", encode_record(record))


def sent_commands(app: Celery, broker_url: str, sent: Iterable[tuple[str, str]]) -> list[Command]:
    """``XADD`` commands of the ``sent`` records of ``(task id, task name)`` pairs, to
    run with the messages; none when history is off or the stream lives elsewhere."""
    options = options_of(app)
    if not options.history or options.redis_url != broker_url:
        return []
    return [("xadd", _xadd(options, task_id, name)) for task_id, name in sent]


def sent_after_needed(app: Celery, broker_url: str, *, by_celery: bool) -> bool:
    """Whether :func:`sent_after` has records to append for such a send."""
    options = options_of(app)
    return options.history and (by_celery or options.redis_url != broker_url)


def sent_after(app: Celery, broker_url: str, sent: Sequence[tuple[str, str]], *, by_celery: bool) -> None:
    """Append the ``sent`` records after a send that could not carry them: one made by
    Celery's ``send_task`` (``by_celery``), or any send while the stream lives on
    another Redis than the queues. A Redis error only logs: the task was sent."""
    if not sent or not sent_after_needed(app, broker_url, by_celery=by_celery):
        return
    options = options_of(app)
    try:
        with clients_for(app).state().pipeline(transaction=False) as pipe:
            for task_id, name in sent:
                pipe.execute_command("XADD", *_xadd(options, task_id, name))  # type: ignore[no-untyped-call]
            pipe.execute()
    except redis.RedisError as exc:
        logger.warning("task history: could not record %d sent task(s): %s", len(sent), exc)


def run_commands(pipe: Any, commands: Iterable[Command]) -> None:
    """Queue ``commands`` on a (sync or asyncio) pipeline; ``xadd`` goes raw, as
    :func:`sent_commands` builds it (the form scripts take too)."""
    for name, args in commands:
        if name == "xadd":
            pipe.execute_command("XADD", *args)
        else:
            getattr(pipe, name)(*args)
