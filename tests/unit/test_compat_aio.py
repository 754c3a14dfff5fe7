"""Pins the private Celery and kombu names the asyncio pool reaches through ``_compat``."""

from __future__ import annotations

import select
import socket

from celery.concurrency.base import BasePool
from kombu.asynchronous import Hub

from pkg.celery_task._compat import base_pool_info, hub_poll_fd
from pkg.celery_task.worker.hubloop import YieldingPoller


def test_base_pool_info_is_celerys_override_point() -> None:
    assert callable(BasePool._get_info)
    info = base_pool_info(BasePool(3))
    assert info["max-concurrency"] == 3
    assert BasePool(3).info == info


def test_hub_poll_fd_is_the_epoll_set_of_kombus_hub_poller() -> None:
    hub = Hub()
    left, right = socket.socketpair()
    try:
        hub.add_reader(left.fileno(), lambda: None)
        fd = hub_poll_fd(hub)
        assert select.select([fd], [], [], 0)[0] == []
        right.send(b"x")
        assert select.select([fd], [], [], 5)[0] == [fd]  # the set has an event: readable
        hub.poller = YieldingPoller(hub.poller, lambda timeout: None)
        assert hub_poll_fd(hub) == fd  # looked through the asyncio pool's wrapper
    finally:
        hub.close()
        left.close()
        right.close()
