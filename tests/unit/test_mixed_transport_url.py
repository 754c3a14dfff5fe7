"""Our transport reports a ``redis://`` broker URL (what Flower and other tools read)
while connections still use our transport class."""

from __future__ import annotations

from kombu import Connection

from pkg.celery_task import CeleryClient, PriorityRedisTransport
from pkg.celery_task.worker.transport import TRANSPORT_PATH


def test_app_connections_use_our_class_and_report_a_redis_url() -> None:
    client = CeleryClient(app_name="url", broker_url="redis://:secret@127.0.0.1:6390/4")
    assert client.app.conf.broker_transport == TRANSPORT_PATH
    conn = client.app.connection_for_write()
    try:
        assert isinstance(conn.transport, PriorityRedisTransport)
        assert conn.as_uri() == "redis://:**@127.0.0.1:6390/4"
        assert conn.as_uri(include_password=True) == "redis://:secret@127.0.0.1:6390/4"
        assert isinstance(conn.clone().transport, PriorityRedisTransport)
    finally:
        conn.release()


def test_stock_connections_are_untouched() -> None:
    conn = Connection("redis://127.0.0.1:6390/4")
    assert type(conn.transport).__module__ == "kombu.transport.redis"
    assert conn.as_uri().startswith("redis://") and "6390/4" in conn.as_uri()
