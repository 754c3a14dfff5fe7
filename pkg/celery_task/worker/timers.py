"""Cancelled entries dropped from the worker's timer heap, so finished tasks' time-limit
timers do not pile up."""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from .._compat import compact_timer

__all__ = ["TimerCompaction"]


class TimerCompaction(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: drop cancelled entries from the event loop's timer heap.

    With time limits set, the prefork pool schedules a soft and a hard time-limit timer
    for every task and cancels them when it finishes; kombu's timer keeps cancelled
    entries until they come due, so the worker holds rate x hard-limit entries (about
    150 MB at 1,000 tasks/s with a 6-minute limit). Compacting every few seconds bounds
    that to a few seconds' worth.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)
    interval = 5.0

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self._tref: Any = None

    def start(self, c: Any) -> None:
        hub = getattr(c, "hub", None)
        if hub is None or self._tref is not None:
            return
        timer = hub.timer
        self._tref = hub.call_repeatedly(self.interval, lambda: compact_timer(timer))

    def shutdown(self, c: Any) -> None:
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
