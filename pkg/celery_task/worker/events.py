"""Task events published in batches on a short timer instead of on every loop turn."""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from .._options import options_of

__all__ = ["EventBatching"]

logger = logging.getLogger(__name__)


class EventBatching(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: publish the worker's buffered task events on a short timer.

    Celery already sends task events as one ``task.multi`` message per flush, but it
    flushes on every turn of the event loop: about one synchronous PUBLISH per task in
    the process that also fetches and acknowledges messages. Flushing every
    ``tasksys_event_flush_interval`` seconds (or at ``tasksys_event_buffer_limit``
    events) keeps the same events, in order, at most that much later.
    """

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self._pending = False

    def start(self, c: Any) -> None:
        dispatcher = c.event_dispatcher
        interval = options_of(c.app).event_flush_interval
        if dispatcher is None or c.hub is None or interval <= 0:
            return
        dispatcher.buffer_limit = max(dispatcher.buffer_limit, options_of(c.app).event_buffer_limit)

        def flush() -> None:
            self._pending = False
            if c.event_dispatcher is not None:
                c.event_dispatcher.flush()

        def schedule() -> None:
            if not self._pending:
                self._pending = True
                c.timer.call_after(interval, flush)

        dispatcher.on_send_buffered = schedule

    def _flush(self, c: Any) -> None:
        if c.event_dispatcher is not None:
            try:
                c.event_dispatcher.flush()
            except Exception:  # shutting down: report, never block the shutdown
                logger.warning("could not flush buffered task events", exc_info=True)

    def stop(self, c: Any) -> None:
        self._flush(c)

    def shutdown(self, c: Any) -> None:
        self._flush(c)
