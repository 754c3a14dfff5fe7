"""Pins what ``_compat``'s Redis-clients section relies on in RedBeat."""

from __future__ import annotations

import inspect

from redbeat import schedulers


def test_redbeat_caches_its_client_on_the_app_under_the_public_key() -> None:
    assert schedulers.REDBEAT_REDIS_KEY == "redbeat_redis", "review _compat.use_redbeat_client"
    source = inspect.getsource(schedulers.get_redis)
    assert "getattr(app, REDBEAT_REDIS_KEY) is None" in source, (
        "RedBeat's get_redis no longer reuses a client set on the app; review _compat.use_redbeat_client"
    )


def test_set_redbeat_connect_takes_app_key_connection_and_retry_period() -> None:
    setter = getattr(schedulers, "_set_redbeat_connect", None)
    assert setter is not None, (
        "redbeat.schedulers._set_redbeat_connect is gone; review _compat.use_redbeat_client"
    )
    assert list(inspect.signature(setter).parameters) == [
        "app",
        "connect_name",
        "connection",
        "retry_period",
    ], "redbeat.schedulers._set_redbeat_connect changed its parameters; review _compat.use_redbeat_client"
    assert "RetryingConnection(retry_period, connection)" in inspect.getsource(setter)
