"""Pins the private Celery name the asyncio pool reaches through ``_compat``."""

from __future__ import annotations

from celery.concurrency.base import BasePool

from pkg.celery_task._compat import base_pool_info


def test_base_pool_info_is_celerys_override_point() -> None:
    assert callable(BasePool._get_info)
    info = base_pool_info(BasePool(3))
    assert info["max-concurrency"] == 3
    assert BasePool(3).info == info
