"""The deferred STARTED writer: writes fall due in the order they were added, all due
ones go out together (bounded), and a cancelled or replaced write is never made."""

from __future__ import annotations

import threading
import time
from typing import Any

from pkg.celery_task.worker.backend import DEFERRED_BATCH_MAX, _DeferredWrites


class Recorder:
    """A ``write_many`` that records each batch it was given."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[Any, ...]]] = []
        self.done = threading.Event()
        self.expect = 0

    def __call__(self, batch: list[tuple[Any, ...]]) -> None:
        self.batches.append(batch)
        if sum(len(b) for b in self.batches) >= self.expect:
            self.done.set()

    def written(self) -> list[tuple[Any, ...]]:
        return [args for batch in self.batches for args in batch]


def test_due_writes_go_out_together_in_the_order_they_were_added() -> None:
    record = Recorder()
    record.expect = 5
    writes = _DeferredWrites(record, delay=0.2)
    for i in range(5):
        writes.add(f"k{i}", (f"k{i}", i))
    assert record.batches == []  # nothing before the delay
    assert record.done.wait(5)
    assert record.written() == [(f"k{i}", i) for i in range(5)]
    assert len(record.batches) == 1


def test_a_cancelled_write_is_never_made_and_a_replaced_one_carries_the_newer_args() -> None:
    record = Recorder()
    record.expect = 2
    writes = _DeferredWrites(record, delay=0.2)
    writes.add("a", ("a", 1))
    writes.add("b", ("b", 1))
    writes.add("c", ("c", 1))
    writes.cancel("b")
    writes.add("a", ("a", 2))  # waits the delay anew, after c
    assert record.done.wait(5)
    time.sleep(0.3)
    assert record.written() == [("c", 1), ("a", 2)]


def test_a_batch_is_bounded_and_the_rest_follows() -> None:
    record = Recorder()
    record.expect = DEFERRED_BATCH_MAX + 7
    writes = _DeferredWrites(record, delay=0.05)
    for i in range(record.expect):
        writes.add(i, (i,))
    assert record.done.wait(5)
    assert max(len(b) for b in record.batches) <= DEFERRED_BATCH_MAX
    assert [args[0] for args in record.written()] == list(range(record.expect))


def test_a_failed_batch_is_reported_and_later_writes_still_go_out() -> None:
    calls: list[list[tuple[Any, ...]]] = []
    second = threading.Event()

    def flaky(batch: list[tuple[Any, ...]]) -> None:
        calls.append(batch)
        if len(calls) == 1:
            raise ConnectionError("redis went away")
        second.set()

    writes = _DeferredWrites(flaky, delay=0.05)
    writes.add("x", ("x",))
    time.sleep(0.3)
    writes.add("y", ("y",))
    assert second.wait(5)
    assert calls == [[("x",)], [("y",)]]


def test_a_cancel_waits_for_its_own_write_under_way_only() -> None:
    started, release = threading.Event(), threading.Event()
    written: list[Any] = []

    def slow(batch: list[tuple[Any, ...]]) -> None:
        started.set()
        release.wait(5)
        written.extend(batch)

    writes = _DeferredWrites(slow, delay=0.05)
    writes.add("busy", ("busy",))
    assert started.wait(5)
    other = threading.Thread(target=writes.cancel, args=("other",))
    other.start()
    other.join(5)
    assert not other.is_alive()  # nothing of its own was being written: it did not wait
    cancelled = threading.Event()
    waiter = threading.Thread(target=lambda: (writes.cancel("busy"), cancelled.set()))
    waiter.start()
    assert not cancelled.wait(0.3)  # its write is under way: the cancel waits for it
    release.set()
    assert cancelled.wait(5)
    waiter.join(5)
    assert written == [("busy",)]
