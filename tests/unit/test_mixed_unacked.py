"""Our transport's own unacked index: the defaults, user overrides, reserved queue
names, and when the sweep of kombu's default index applies."""

from __future__ import annotations

from typing import Any

from kombu import Connection

from pkg.celery_task import CeleryClient
from pkg.celery_task.worker.heartbeat import LegacyUnackedSweep

OURS = {
    "unacked_key": "tasksys:unacked",
    "unacked_index_key": "tasksys:unacked_index",
    "unacked_mutex_key": "tasksys:unacked_mutex",
}


def test_our_transport_uses_its_own_unacked_keys_and_they_are_reserved() -> None:
    client = CeleryClient(app_name="u", broker_url="redis://127.0.0.1:6390/1")
    options = client.app.conf.broker_transport_options
    assert {k: options[k] for k in OURS} == OURS
    assert options["visibility_timeout"] == 30
    reserved = client._parts.validator.reserved_queue_prefixes
    assert {"unacked", "tasksys:", "tasksys:unacked_index"} <= set(reserved)


def test_user_overrides_of_the_keys_win() -> None:
    client = CeleryClient(
        app_name="u",
        broker_url="redis://127.0.0.1:6390/1",
        broker_transport_options={"unacked_index_key": "team:idx", "visibility_timeout": 60},
    )
    options = client.app.conf.broker_transport_options
    assert options["unacked_index_key"] == "team:idx" and options["unacked_key"] == "tasksys:unacked"
    assert options["visibility_timeout"] == 60
    assert "team:idx" in client._parts.validator.reserved_queue_prefixes


class _Channel:
    def __init__(self, index: str, options: dict[str, Any]) -> None:
        self.unacked_index_key = index
        self.connection = type(
            "T", (), {"client": Connection("redis://127.0.0.1:6390/1", transport_options=options)}
        )()


def test_the_legacy_sweep_is_a_stock_kombu_channel_with_kombus_defaults() -> None:
    options = {**OURS, "priority_steps": list(range(10)), "visibility_timeout": 30, "global_keyprefix": "p:"}
    sweep = LegacyUnackedSweep.for_channel(_Channel("tasksys:unacked_index", options), 3600)  # type: ignore[arg-type]
    assert sweep is not None
    conn = sweep._connection
    assert type(conn.transport).__module__ == "kombu.transport.redis"
    assert conn.transport_options == {"global_keyprefix": "p:", "visibility_timeout": 3600.0}
    assert LegacyUnackedSweep.for_channel(_Channel("unacked_index", {}), 3600) is None  # type: ignore[arg-type]
    assert LegacyUnackedSweep.for_channel(_Channel("tasksys:unacked_index", {}), 0) is None  # type: ignore[arg-type]
