"""The asyncio pool's fetch window: grows while the loop keeps up and the window is
used, shrinks once per window when the loop lags, stays within its bounds."""

from __future__ import annotations

import asyncio
import time

from pkg.celery_task.worker.window import FLOOR_SIZE, START_SIZE, TICK_SECONDS, FetchWindow


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _window(limit: int = 500, target: float = 0.05) -> tuple[FetchWindow, list[int]]:
    running = [0]
    loop = asyncio.new_event_loop()
    loop.close()
    return FetchWindow(loop, limit, target, lambda: running[0]), running


def test_it_starts_small_and_grows_while_full_and_the_loop_keeps_up() -> None:
    window, _ = _window()
    assert window.size == START_SIZE
    sizes = []
    for _ in range(40):
        window.observe(0.001, 1.0, window.size)
        sizes.append(window.size)
    assert sizes == sorted(sizes) and sizes[-1] == 500
    assert sizes[:3] == [18, 20, 22]  # an eighth at a time


def test_it_does_not_grow_while_not_full_or_while_the_loop_is_busy() -> None:
    window, _ = _window()
    window.observe(0.001, 0.5, START_SIZE - 1)  # what runs does not fill it
    window.observe(0.04, 1.0, START_SIZE)  # saturated, lag between half the target and it
    assert window.size == START_SIZE
    assert window.grown == 0


def test_lag_with_cpu_to_spare_grows_it_and_lag_while_saturated_shrinks_it() -> None:
    """Tasks that started together hold the loop together (lag) though the thread is
    mostly idle: more of them fit. Only a saturated thread that lags shrinks it."""
    window, _ = _window()
    window.observe(0.3, 0.4, START_SIZE)
    assert window.size > START_SIZE
    size = window.size
    window.observe(0.3, 0.99, size)
    assert window.size < size


def test_it_shrinks_once_per_window_and_never_below_the_floor() -> None:
    window, _ = _window()
    window.size = 400
    window.observe(0.2, 1.0, 400)
    assert window.size == 320
    window.observe(0.2, 1.0, 400)  # what runs has not come down to the window yet: hold
    assert window.size == 320
    window.observe(0.2, 1.0, 100)  # a grown window, less running, saturated: to what runs
    assert window.size == 80
    for _ in range(50):
        window.observe(0.2, 1.0, window.size)
    assert window.size == FLOOR_SIZE
    assert window.shrunk > 2


def test_small_pools_stay_within_their_limit() -> None:
    window, _ = _window(limit=3)
    assert window.size == 3 and window.floor == 3
    window.observe(1.0, 1.0, 3)
    window.observe(0.0, 0.0, 3)
    assert window.size == 3


def test_room_is_what_the_window_holds_beyond_what_runs() -> None:
    async def main() -> tuple[int, int, bool]:
        running = [10]
        window = FetchWindow(asyncio.get_running_loop(), 500, 0.05, lambda: running[0])
        first = window.room()
        running[0] = 40
        second = window.room()
        ticking = window._timer is not None
        window.stop()
        return first, second, ticking

    assert asyncio.run(main()) == (START_SIZE - 10, 0, True)


def test_ticks_sample_the_lag_of_a_busy_loop_and_stop_when_idle() -> None:
    """On a real loop: a callback that holds the loop for 0.15 s shows as lag and the
    window shrinks; a full window on an idle loop grows and wakes the fetch; ticks stop
    once nothing runs."""

    async def main() -> tuple[float, int, int, bool]:
        loop = asyncio.get_running_loop()
        running = [START_SIZE]
        woken: list[int] = []
        window = FetchWindow(loop, 500, 0.05, lambda: running[0], on_room=lambda: woken.append(1))
        assert window.room() == 0
        loop.call_soon(_spin, 0.15)  # a body holding the loop (CPU)
        await asyncio.sleep(TICK_SECONDS * 2)
        lag, size = window.lag, window.size
        running[0] = window.size  # full, on a loop that keeps up: it grows
        await asyncio.sleep(TICK_SECONDS * 4)
        grown = window.size
        running[0] = 0
        await asyncio.sleep(TICK_SECONDS * 4)
        return lag, size, len(woken), grown, window

    lag, size, woken, grown, window = asyncio.run(main())
    assert lag > 0.05 and size < START_SIZE, (lag, size)
    assert woken >= 1
    assert window._timer is None  # idle: no ticks
    assert grown > size and window.size == min(grown, START_SIZE)  # and small again
