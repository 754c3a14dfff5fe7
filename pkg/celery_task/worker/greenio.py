"""Redis writes of the asyncio pool's tracers, sent together: one round trip per loop turn.

On the asyncio pool the tracer of an ``async def`` task runs in a greenlet of the loop
thread (:mod:`.pool`). Its result store and its acknowledgement are sync Redis calls:
each would block the loop, and every other task of the process, for a round trip. A
tracer that makes one through :func:`pipelined` parks instead; at the end of the loop
turn :class:`GreenPipeline` sends the commands of every tracer parked in that turn in
one pipeline per Redis server, then resumes each with its own replies. Order within a
tracer is kept (it waits for its store before it acks), so the guarantees are those of
the sync calls. Outside a tracer greenlet, or when the batch fails, the caller makes
its usual call (with its retries): every command sent this way is idempotent.

The consumer's hub, also on the loop thread, acknowledges messages (Celery queues each
ack as a hub callback once the tracer stored the result): :func:`deferred` sends its
writes with the same flush, and makes them the usual way if the flush fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from greenlet import getcurrent, greenlet

__all__ = [
    "GreenPipeline",
    "deferred",
    "in_tracer",
    "on_loop_pipeline",
    "pause",
    "pipelined",
    "resume",
    "succeeded",
]

logger = logging.getLogger(__name__)

#: What a caller queues on the pipeline (its commands only; it reads no reply here).
Commands = Callable[[Any], None]


class GreenPipeline:
    """Commands of tracer greenlets on ``loop``, sent once per loop turn; ``after_flush``
    runs once the tracers resumed by a flush have parked again or finished."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, after_flush: Callable[[], None] | None = None
    ) -> None:
        self.loop = loop
        self.after_flush = after_flush
        #: (client, commands, tracer parked for the replies, or the fallback of a deferred write)
        self._parked: list[tuple[Any, Commands, greenlet | Callable[[], None]]] = []
        #: Round trips made and commands they carried (for the pool's stats).
        self.flushes = 0
        self.commands = 0

    def call(self, client: Any, commands: Commands) -> list[Any] | None:
        """From a tracer greenlet: park until the turn's flush; its replies (errors as
        exception objects), or None when the pipeline could not be sent."""
        me = getcurrent()
        if me.parent is None:
            return None
        self._park(client, commands, me)
        replies = me.parent.switch()
        return replies if isinstance(replies, list) else None

    def defer(self, client: Any, commands: Commands, fallback: Callable[[], None]) -> None:
        """On the loop thread, outside a tracer (the consumer's hub): send ``commands``
        with this turn's flush, without waiting; if they fail, ``fallback()`` then."""
        self._park(client, commands, fallback)

    def _park(self, client: Any, commands: Commands, waiter: greenlet | Callable[[], None]) -> None:
        """Queue for this turn's flush, which the first caller of the turn schedules."""
        self._parked.append((client, commands, waiter))
        if len(self._parked) == 1:
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        parked, self._parked = self._parked, []
        replies: dict[int, Any] = {}
        by_pool: dict[int, list[tuple[int, Any, Commands]]] = {}
        for index, (client, commands, _) in enumerate(parked):
            by_pool.setdefault(id(client.connection_pool), []).append((index, client, commands))
        for group in by_pool.values():
            self._send(group, replies)
        for index, (_, _, waiter) in enumerate(parked):
            reply = replies.get(index)
            if isinstance(waiter, greenlet):
                resume(waiter, reply)
            elif not succeeded(reply):
                try:
                    waiter()
                except Exception:  # a loop boundary: one caller's failure must not stop the loop
                    logger.exception("asyncio pool: a pipelined Redis write failed")
        if self.after_flush is not None:
            self.after_flush()

    def _send(self, group: list[tuple[int, Any, Commands]], replies: dict[int, Any]) -> None:
        """One pipeline for the callers of one Redis server; on failure none gets replies."""
        try:
            with group[0][1].pipeline(transaction=False) as pipe:
                spans = []
                for index, _, commands in group:
                    start = len(pipe)
                    commands(pipe)
                    spans.append((index, start, len(pipe)))
                sent = pipe.execute(raise_on_error=False)
        except Exception as exc:  # the callers fall back to their own call, with retries
            logger.debug("pipelined tracer writes failed (%s); each is made on its own", exc)
            return
        self.flushes += 1
        self.commands += len(sent)
        for index, start, end in spans:
            replies[index] = sent[start:end]


def in_tracer() -> bool:
    """True in a tracer greenlet on the asyncio pool's loop (where :func:`pause` waits
    without stopping the loop)."""
    current = getcurrent()
    return getattr(current, "green_pipeline", None) is not None and current.parent is not None


def pause(seconds: float) -> None:
    """Sleep ``seconds``; in a tracer greenlet on the loop, only that tracer waits (a
    retry's backoff there would otherwise stop every task of the process)."""
    if not in_tracer():
        time.sleep(seconds)
        return
    current = getcurrent()
    current.green_pipeline.loop.call_later(seconds, resume, current)
    current.parent.switch()


def resume(tracer: greenlet, *args: Any, **kwargs: Any) -> None:
    """On the loop: switch to ``tracer`` until it parks or ends; what escapes it (a
    ``BaseException`` the tracer lets through) is logged here, where it would otherwise
    stop the loop itself."""
    try:
        tracer.switch(*args, **kwargs)
    except BaseException:  # a loop boundary: one tracer must not stop the loop
        logger.exception("asyncio pool: a task's tracer raised; its message is not acknowledged")


def succeeded(replies: list[Any] | None) -> bool:
    """True when pipelined commands were sent and none of them answered an error."""
    return replies is not None and not any(isinstance(reply, Exception) for reply in replies)


def on_loop_pipeline() -> bool:
    """True when the caller (a tracer or the hub of the asyncio pool) sends its Redis
    writes through a :class:`GreenPipeline`; a cheap check before building them."""
    current = getcurrent()
    return hasattr(current, "green_pipeline") or hasattr(current, "deferred_pipeline")


def deferred(client: Any, commands: Commands, fallback: Callable[[], None]) -> bool:
    """Queue ``commands`` for this loop turn's pipeline without waiting, when the
    caller is the consumer's hub on the asyncio pool's loop (:mod:`.hubloop`); False
    otherwise (make the call yourself). ``fallback`` makes it when the pipeline fails."""
    batch = getattr(getcurrent(), "deferred_pipeline", None)
    if batch is None:
        return False
    batch.defer(client, commands, fallback)
    return True


def pipelined(client: Any, commands: Commands) -> list[Any] | None:
    """The replies to ``commands`` sent on this loop turn's pipeline, when the caller
    is a tracer greenlet of the asyncio pool; None otherwise (make the call yourself)."""
    batch = getattr(getcurrent(), "green_pipeline", None)
    if batch is None:
        return None
    result: list[Any] | None = batch.call(client, commands)
    return result
