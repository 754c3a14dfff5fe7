"""How many tasks the asyncio pool lets its loop run at once: a window that grows
while the loop keeps up and shrinks when the loop's lag says it is saturated.

Prefetch sized to ``--concurrency`` lets one worker take (and start) hundreds of
messages at once; on one event loop, past the number its CPU can serve, more tasks
in flight only make every ``await`` come back later, hold messages other workers
could run, and grow per-request pools (an httpx pool keeps every connection a burst
opened). The pool's fetch takes only ``room()`` more. Each tick samples the loop's
lag (how late a timer fires) and how busy the loop thread was (its CPU time over the
wall time since the last tick). While the window is full it grows by an eighth if the
lag is under half the target or the thread had time to spare; when the thread is
saturated and the lag is over the target it shrinks to four fifths of what runs, once
per window (not again until what runs has come down to it): lag alone also rises when
tasks that started together hold the loop together, with CPU to spare. It never goes
below ``floor`` nor above the prefetch limit, and starts small again after the pool
was idle (a burst after a pause must not take the whole of a grown window at once).
``tasksys_asyncio_lag_target`` 0 turns it off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["TICK_SECONDS", "FetchWindow"]

#: Seconds between two lag samples while tasks run (no ticks while the pool is idle).
TICK_SECONDS = 0.025
#: The window a worker starts with (and its least), when its concurrency is larger.
START_SIZE = 16
FLOOR_SIZE = 8
#: The loop thread counts as saturated from this share of CPU time over wall time.
SATURATED = 0.85


class FetchWindow:
    """The number of tasks the loop may run at once, adjusted by its lag; ``running``
    counts the pool's jobs, ``on_room`` is called when the window opens (wakes the
    fetch). Every method runs on the loop thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limit: int,
        target: float,
        running: Callable[[], int],
        on_room: Callable[[], None] | None = None,
    ) -> None:
        self.loop = loop
        self.limit = max(1, int(limit))
        self.target = target
        self.floor = min(self.limit, FLOOR_SIZE)
        self.start = min(self.limit, START_SIZE)
        self.size = self.start
        self.lag = 0.0
        self.busy = 0.0
        self.grown = 0
        self.shrunk = 0
        self._running = running
        self._on_room = on_room
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._cpu_at = 0.0
        self._wall_at = 0.0

    def room(self) -> int:
        """How many more messages the fetch may take now (0: none until tasks end)."""
        running = self._running()
        if self._timer is None and running:
            self._schedule()
        return max(0, self.size - running)

    def observe(self, lag: float, busy: float, running: int) -> None:
        """Adjust the window to one sample: the loop's ``lag`` and the share of time its
        thread was ``busy``, while ``running`` jobs ran."""
        self.lag, self.busy = lag, busy
        saturated = busy >= SATURATED
        if saturated and lag > self.target:
            if running <= self.size and self.size > self.floor:
                self.size = max(self.floor, running * 4 // 5)
                self.shrunk += 1
        elif (lag < self.target / 2 or not saturated) and running >= self.size and self.size < self.limit:
            self.size = min(self.limit, self.size + max(1, self.size // 8))
            self.grown += 1

    def stop(self) -> None:
        """Stop sampling (the hub that fetched through it is gone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self._wall_at, self._cpu_at = self.loop.time(), time.thread_time()
        self._due = self._wall_at + TICK_SECONDS
        self._timer = self.loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        self._timer = None
        running = self._running()
        before = self.size - running
        now, cpu = self.loop.time(), time.thread_time()
        busy = (cpu - self._cpu_at) / max(now - self._wall_at, 1e-6)
        self.observe(now - self._due, busy, running)
        if running:
            self._schedule()
        else:
            self.size = min(self.size, self.start)
        if before <= 0 < self.size - running and self._on_room is not None:
            self._on_room()
