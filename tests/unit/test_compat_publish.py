"""Pins what the "Publishing: the fast path" section of ``pkg.celery_task._compat`` relies
on in the installed Celery and kombu, so an upgrade that moves one fails here, naming it
and the compat function to review."""

from __future__ import annotations

import inspect
from typing import Any

from celery import Celery
from celery.backends.asynchronous import AsyncBackendMixin
from celery.backends.base import BaseBackend
from celery.backends.redis import RedisBackend
from celery.result import AsyncResult
from kombu.messaging import Producer
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as virtual
from kombu.transport.virtual import exchange as virtual_exchange
from kombu.utils.json import dumps

from pkg.celery_task import _compat
from pkg.celery_task._fastpath import CommandBuffer, _BufferedChannel, _BufferingProducer


def _app() -> Celery:
    return Celery("pin", set_as_current=False, broker="memory://", backend="cache+memory://")


def test_send_task_still_has_the_steps_prepare_task_reproduces() -> None:
    source = " ".join(inspect.getsource(Celery.send_task).split())
    missing = [step for step in _compat.SEND_TASK_STEPS if step not in source]
    assert not missing, (
        f"Celery.send_task changed; review _fastpath.prepare_task, fast_path_supports and "
        f"_compat.create_task_message against it. Steps no longer found: {missing}"
    )


def test_registered_task_reads_the_registry_without_finalizing() -> None:
    app = Celery("pin", set_as_current=False, autofinalize=False)
    assert hasattr(app, "_tasks"), "Celery._tasks moved; review _compat.registered_task"
    assert _compat.registered_task(app, "no.such.task") is None
    assert not app.finalized, "reading Celery._tasks finalized the app; review _compat.registered_task"
    app.finalize()
    assert _compat.registered_task(app, "celery.chord") is app.tasks["celery.chord"], (
        "Celery._tasks is no longer the registry app.tasks returns; review _compat.registered_task"
    )


def test_task_exec_defaults_are_the_set_exec_options() -> None:
    app = _app()

    @app.task(name="pin.defaults", expires=10, time_limit=5)
    def defaults() -> None: ...

    assert inspect.ismethod(getattr(defaults, "_get_exec_options", None)), (
        "Task._get_exec_options moved; review _compat.task_exec_defaults"
    )
    assert _compat.task_exec_defaults(defaults) == {
        "expires": 10,
        "serializer": "json",
        "time_limit": 5,
    }, "Task._get_exec_options returns other options; review _compat.task_exec_defaults"
    assert _compat.task_exec_defaults(object()) == {}


def test_create_task_message_parameters_and_keyword_call_equal_send_tasks_positional_call() -> None:
    app = _app()
    parameters = tuple(inspect.signature(app.amqp.create_task_message).parameters)
    assert parameters == _compat.CREATE_TASK_MESSAGE_PARAMETERS, (
        f"AMQP.create_task_message parameters changed from {_compat.CREATE_TASK_MESSAGE_PARAMETERS} "
        f"to {parameters}; review _compat.create_task_message"
    )
    fields: dict[str, Any] = {
        "task_id": "pin-id",
        "name": "pin.task",
        "args": (1, 2),
        "kwargs": {"x": 1},
        "countdown": None,
        "eta": None,
        "expires": None,
        "reply_to": "reply",
        "time_limit": 5,
        "soft_time_limit": 4,
        "create_sent_event": True,
        "root_id": "root",
        "parent_id": "parent",
        "ignore_result": False,
    }
    ours = _compat.create_task_message(app, **fields, options={"priority": 3})
    f = fields
    positional = app.amqp.create_task_message(
        f["task_id"], f["name"], f["args"], f["kwargs"], f["countdown"], f["eta"], None, None,
        f["expires"], 0, None, None, None, f["reply_to"], f["time_limit"], f["soft_time_limit"],
        f["create_sent_event"], f["root_id"], f["parent_id"], None, None,
        ignore_result=False, replaced_task_nesting=0, priority=3,
    )  # fmt: skip
    assert ours == positional, "create_task_message by keyword differs; review _compat.create_task_message"


class _Recorder:
    """A fake with only what kombu's Redis channel may use to route a message: any
    attempt to reach Redis fails with AttributeError."""

    sep = "\x06\x16"
    priority_steps = [0, 3]
    _expires = {"expiring": 60_000}

    def _get_message_priority(self, message: Any, reverse: bool = False) -> int:
        return 3

    def _q_for_pri(self, queue: str, pri: int) -> str:
        return f"{queue}{self.sep}{pri}" if pri else queue

    def _get_publish_topics(self, exchange: str, routing_key: str) -> list[str]:
        return [f"/0.{exchange}/{routing_key}"]


def test_kombu_redis_channel_hands_commands_to_a_publish_batch_without_io() -> None:
    for method, path in (
        (virtual.Channel.basic_publish, "virtual.Channel.basic_publish"),
        (virtual_exchange.DirectExchange.deliver, "DirectExchange.deliver"),
        (virtual_exchange.FanoutExchange.deliver, "FanoutExchange.deliver"),
    ):
        kinds = {p.kind for p in inspect.signature(method).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD in kinds, (
            f"kombu {path} no longer passes publish keywords on; review _compat.publish_to_batch"
        )
    assert "_publish_batch=self" in inspect.getsource(kombu_redis.PublishBatch.publish), (
        "kombu's PublishBatch no longer uses basic_publish(_publish_batch=); review _compat.publish_to_batch"
    )
    buffer, message = CommandBuffer(), {"body": "b", "properties": {}}
    kombu_redis.Channel._put(_Recorder(), "plain", message, _publish_batch=buffer)
    kombu_redis.Channel._put(_Recorder(), "expiring", message, _publish_batch=buffer)
    kombu_redis.Channel._put_fanout(_Recorder(), "celeryev", message, "task.sent", _publish_batch=buffer)
    sep = _Recorder.sep
    assert buffer.take() == [
        ("lpush", (f"plain{sep}3", dumps(message))),
        ("lpush", (f"expiring{sep}3", dumps(message))),
        ("pexpire", ("expiring", 60_000)),
        ("pexpire", (f"expiring{sep}3", 60_000)),
        ("publish", ("/0.celeryev/task.sent", dumps(message))),
    ], "kombu's Redis channel emits other publish-batch commands; review _compat.publish_to_batch"


class _FakeChannel:
    """Just enough of a kombu channel for ``Producer.publish`` with nothing to declare."""

    connection = None
    default_priority = 0

    def __init__(self) -> None:
        self.published: list[tuple[Any, dict[str, Any]]] = []

    def prepare_message(self, *args: Any) -> Any:
        return virtual.Channel.prepare_message(self, *args)

    def basic_publish(self, message: Any, **kwargs: Any) -> None:
        self.published.append((message, kwargs))


def test_kombu_producer_publishes_through_its_channels_basic_publish() -> None:
    channel, buffer = _FakeChannel(), CommandBuffer()
    producer = _BufferingProducer(_BufferedChannel(channel, buffer), serializer="json")  # type: ignore[arg-type]
    producer.publish({"a": 1}, routing_key="q", retry=True, headers={"h": 1}, expiration=2)
    ((message, kwargs),) = channel.published
    assert kwargs.pop("_publish_batch") is buffer, (
        "kombu's Producer.publish no longer reaches channel.basic_publish; review _fastpath._BufferedChannel"
    )
    assert kwargs["routing_key"] == "q" and message["headers"] == {"h": 1}
    assert message["properties"]["expiration"] == "2000"
    assert "retry" in inspect.signature(Producer.publish).parameters


class _Consumer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def consume_from(self, task_id: str) -> None:
        self.calls.append(("consume_from", task_id))


def test_redis_on_task_call_only_subscribes_and_the_result_undoes_it() -> None:
    fake = type("Backend", (), {"result_consumer": _Consumer()})()
    RedisBackend.on_task_call(fake, None, "t-1")
    assert fake.result_consumer.calls == [("consume_from", "t-1")], (
        "RedisBackend.on_task_call does more than subscribe; review _compat.task_call_hook_skippable"
    )
    assert BaseBackend.on_task_call(fake, None, "t-1") == {}
    assert "remove_pending_result" in inspect.getsource(AsyncResult.__del__), (
        "AsyncResult no longer unsubscribes when collected; review _compat.task_call_hook_skippable"
    )
    assert "cancel_for" in inspect.getsource(AsyncBackendMixin.on_result_fulfilled)
    assert _compat.task_call_hook_skippable(_app().backend)

    class Hooked(RedisBackend):  # type: ignore[misc]
        def on_task_call(self, producer: Any, task_id: str) -> None: ...

    assert not _compat.task_call_hook_skippable(Hooked.__new__(Hooked))
