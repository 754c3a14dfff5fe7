"""``priority_filing_steps``: our 0-9 meaning filed on stock kombu's four steps, while
every one of the ten steps is still polled."""

from __future__ import annotations

from typing import Any

import pytest

from pkg.celery_task.worker.transport import STOCK_PRIORITY_STEPS, PriorityRedisChannel, check_filing_steps


def _keys(options: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Keys a channel with these transport options files priorities 0..9 on, and polls."""
    channel = PriorityRedisChannel.__new__(PriorityRedisChannel)  # the filing logic only
    channel.priority_steps = list(options.get("priority_steps", range(10)))
    channel._filing_steps = options.get("priority_filing_steps")
    filed = [
        channel._q_for_pri("q", channel._get_message_priority({"properties": {"priority": p}}))
        for p in range(10)
    ]
    return filed, [channel._q_for_pri("q", step) for step in channel.priority_steps]


def test_stock_steps_file_our_p_where_stock_files_9_minus_p() -> None:
    filed, polled = _keys({"priority_steps": list(range(10)), "priority_filing_steps": STOCK_PRIORITY_STEPS})
    stock = {0: "q", 3: "q\x06\x163", 6: "q\x06\x166", 9: "q\x06\x169"}
    assert filed == [stock[s] for s in (9, 6, 6, 6, 3, 3, 3, 0, 0, 0)]
    assert len(set(polled)) == 10


def test_default_files_on_ten_steps() -> None:
    filed, _ = _keys({"priority_steps": list(range(10))})
    assert filed == ["q\x06\x16" + str(9 - p) if p != 9 else "q" for p in range(10)]


@pytest.mark.parametrize("steps", [[3, 6, 9], [0, 6, 3], [0, 11], "0369", [0, 0, 3], [], [0.0, 3]])
def test_bad_filing_steps_are_refused(steps: object) -> None:
    with pytest.raises(ValueError, match="priority_filing_steps"):
        check_filing_steps(steps, list(range(10)))


def test_filing_steps_must_be_polled() -> None:
    assert check_filing_steps((0, 3, 6, 9), list(range(10))) == [0, 3, 6, 9]
    with pytest.raises(ValueError, match="among priority_steps"):
        check_filing_steps([0, 5], [0, 3, 6, 9])
