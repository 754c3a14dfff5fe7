"""Pipelined publishing of exactly the messages Celery's ``send_task`` publishes.

Celery's own code builds every message (``amqp.create_task_message``) and sends it
(``amqp.send_task_message``: routing, signals, the ``task-sent`` event). What changes is
the producer handed to it: :class:`CapturingProducer` repeats kombu's
``Producer.publish`` steps without its per-message retry wrapper and entity
re-declaration, and hands each message to kombu's Redis channel with a publish batch,
so the channel itself computes keys and priority sub-queues while the Redis commands
are buffered. They then run in one pipeline per chunk (sync) or on redis.asyncio.

Only the Redis transport is supported; callers fall back to ``send_task`` otherwise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery, signals
from celery.utils.functional import maybe_list
from celery.utils.saferepr import saferepr
from celery.utils.time import maybe_make_aware, utcoffset
from kombu.common import maybe_declare
from kombu.entity import Queue
from kombu.transport import redis as kombu_redis
from kombu.utils.uuid import uuid

from ._request import TaskRequest, json_text

__all__ = [
    "CapturingProducer",
    "CommandBuffer",
    "MessageFactory",
    "PreparedTask",
    "pipeline_commands",
    "prepare_task",
]


@dataclass
class PreparedTask:
    """A task message built by Celery, ready for ``amqp.send_task_message``."""

    task_id: str
    name: str
    message: Any
    options: dict[str, Any]


#: Options the fast path passes through; anything else (links, chords, custom
#: exchanges, ...) goes through Celery's ``send_task`` unchanged.
FAST_OPTIONS = frozenset({"queue", "priority", "countdown", "eta", "expires", "task_id"})


def prepare_task(
    app: Celery,
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    task_id: str | None = None,
    countdown: float | None = None,
    eta: datetime | None = None,
    expires: float | datetime | None = None,
    **options: Any,
) -> PreparedTask:
    """What ``Celery.send_task`` does before publishing, for the options in
    :data:`FAST_OPTIONS`: registry defaults, routing, expiry, parent ids, message."""
    task_id = task_id or uuid()
    task_type = app.tasks.get(name)
    if task_type is not None:
        defaults = {k: v for k, v in task_type._get_exec_options().items() if v is not None}
        if defaults:
            options = dict(defaults, **options)
    time_limit = options.pop("time_limit", None)
    soft_time_limit = options.pop("soft_time_limit", None)
    default_expires = options.pop("expires", None)
    expires = expires if expires is not None else default_expires
    ignore_result = options.pop("ignore_result", None)
    options = app.amqp.router.route(options, name, args, kwargs, task_type)
    if expires is not None:
        if isinstance(expires, datetime):
            expires_s = (maybe_make_aware(expires) - app.now()).total_seconds()
        else:
            expires_s = expires
        options["expiration"] = max(expires_s, 0)
    root_id = parent_id = None
    parent = app.current_worker_task
    if parent:
        root_id = parent.request.root_id or parent.request.id
        parent_id = parent.request.id
        if app.conf.task_inherit_parent_priority:
            options.setdefault("priority", parent.request.delivery_info.get("priority"))
    message = app.amqp.create_task_message(
        task_id,
        name,
        args,
        kwargs,
        countdown,
        eta,
        None,
        None,
        expires,
        0,
        None,
        maybe_list(None),
        maybe_list(None),
        app.thread_oid,
        time_limit,
        soft_time_limit,
        app.conf.task_send_sent_event,
        root_id,
        parent_id,
        None,
        None,
        ignore_result=ignore_result,
        replaced_task_nesting=0,
        **options,
    )
    for stamp in options.pop("stamped_headers", []):
        options.pop(stamp)
    return PreparedTask(task_id=task_id, name=name, message=message, options=options)


class CommandBuffer:
    """Collects the Redis commands kombu's channel emits for each published message
    (the ``_publish_batch`` protocol of kombu's Redis transport)."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def add(self, name: str, *args: Any) -> None:
        """Called by the channel for each command (lpush, pexpire, publish)."""
        self.commands.append((name, args))

    def take(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The commands so far; the buffer is emptied."""
        commands, self.commands = self.commands, []
        return commands


class CapturingProducer:
    """Stands in for a kombu ``Producer`` in ``amqp.send_task_message`` and the event
    dispatcher: same message as ``Producer.publish``, commands buffered, no I/O
    (entities are declared once, through the real producer)."""

    def __init__(self, producer: Any, buffer: CommandBuffer) -> None:
        self.producer = producer
        self.channel: kombu_redis.Channel = producer.channel
        self.connection = producer.connection
        self.buffer = buffer
        self._declared: set[tuple[type, str]] = set()

    def publish(
        self,
        body: Any,
        routing_key: str | None = None,
        delivery_mode: Any = None,
        mandatory: bool = False,
        immediate: bool = False,
        priority: int = 0,
        content_type: str | None = None,
        content_encoding: str | None = None,
        serializer: str | None = None,
        headers: dict[str, Any] | None = None,
        compression: str | None = None,
        exchange: Any = None,
        retry: bool = False,
        retry_policy: Any = None,
        declare: Any = None,
        expiration: float | None = None,
        timeout: float | None = None,
        confirm_timeout: float | None = None,
        **properties: Any,
    ) -> None:
        """kombu ``Producer.publish`` (kombu 5.7), minus retry wrapping and I/O."""
        producer = self.producer
        headers = {} if headers is None else headers
        routing_key = producer.routing_key if routing_key is None else routing_key
        compression = producer.compression if compression is None else compression
        exchange_name, properties["delivery_mode"] = producer._delivery_details(
            exchange or producer.exchange, delivery_mode
        )
        if expiration is not None:
            properties["expiration"] = str(int(expiration * 1000))
        body, content_type, content_encoding = producer._prepare(
            body, serializer, content_type, content_encoding, compression, headers
        )
        for entity in declare or ():
            key = (type(entity), entity.name)
            if key not in self._declared:
                maybe_declare(entity, self.channel)  # type: ignore[no-untyped-call]
                self._declared.add(key)
        message = self.channel.prepare_message(  # type: ignore[no-untyped-call]
            body, priority, content_type, content_encoding, headers, properties
        )
        reply_to = properties.get("reply_to")
        if isinstance(reply_to, Queue):
            properties["reply_to"] = reply_to.name
        self.channel.basic_publish(  # type: ignore[no-untyped-call]
            message,
            exchange=exchange_name,
            routing_key=routing_key,
            mandatory=mandatory,
            immediate=immediate,
            timeout=timeout,
            confirm_timeout=confirm_timeout,
            _publish_batch=self.buffer,
        )


Command = tuple[str, tuple[Any, ...]]

#: ``saferepr`` of empty containers, which the template path would otherwise compute
#: for every task sent without args or kwargs.
_EMPTY_REPR: dict[type, str] = {kind: saferepr(kind(), 1024) for kind in (list, tuple, dict)}


class _JsonTemplate:
    """The JSON text of a value in which some leaves are named holes.

    A JSON object or array is written as the concatenation of its encoded members in
    order, so filling each hole with the JSON text of a value gives exactly the text of
    encoding the value with that leaf replaced; only the leaves are encoded per use.
    """

    def __init__(self, value: Any, holes: Mapping[str, str]) -> None:
        text = json_text(value)
        found = []
        for name, sentinel in holes.items():
            encoded = json_text(sentinel)
            if text.count(encoded) != 1:
                raise ValueError(f"hole {name!r} is not in the template exactly once")
            found.append((text.index(encoded), len(encoded), name))
        self.literals: list[str] = []
        self.names: list[str] = []
        position = 0
        for index, length, name in sorted(found):
            self.literals.append(text[position:index])
            self.names.append(name)
            position = index + length
        self.literals.append(text[position:])

    def render(self, values: Mapping[str, str]) -> str:
        """The text with each hole replaced by ``values[name]`` (already JSON)."""
        parts = [self.literals[0]]
        for name, literal in zip(self.names, self.literals[1:], strict=True):
            parts.append(values[name])
            parts.append(literal)
        return "".join(parts)


def _holes(*names: str) -> dict[str, str]:
    nonce = uuid()
    return {name: f"@@tasksys-hole:{name}:{nonce}@@" for name in names}


def _set(container: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        container = container[key]
    container[path[-1]] = value


@dataclass
class _Template:
    """Text templates of the task message, its body and its ``task-sent`` event, made
    from what Celery built for one (task, queue, priority, thread) shape."""

    key: str
    body_encoding: str | None
    body: _JsonTemplate
    message: _JsonTemplate
    root_is_id: bool
    event_topic: str | None = None
    event_body_encoding: str | None = None
    event_body: _JsonTemplate | None = None
    event: _JsonTemplate | None = None


class MessageFactory:
    """Builds task messages (and their ``task-sent`` events) for the fast paths.

    The first message of each shape goes through Celery's own code (see
    :func:`prepare_task` and :class:`CapturingProducer`); its output, decoded, becomes a
    template. Later messages of that shape copy the template and set only what differs
    per message, computed the way Celery computes it: task id, ``argsrepr`` and
    ``kwargsrepr`` (``saferepr``), the body, delivery tags, the event's logical clock and
    time. Shapes with an ETA, countdown or expiry, sends from inside a task, and apps
    with publish-signal receivers always take Celery's path.
    """

    def __init__(self, app: Celery, producer: Any) -> None:
        self.app = app
        self.buffer = CommandBuffer()
        self.capture = CapturingProducer(producer, self.buffer)
        self.channel: kombu_redis.Channel = producer.channel
        self._templates: dict[tuple[Any, ...], _Template] = {}

    def build(self, request: TaskRequest) -> tuple[str, list[Command]]:
        """The task id and the Redis commands that publish ``request``."""
        shape = self._shape(request)
        template = self._templates.get(shape) if shape is not None else None
        if template is not None:
            return self._from_template(template, request)
        prepared = prepare_task(self.app, request.task_name, request.args, request.kwargs, **request.options)
        self.app.amqp.send_task_message(self.capture, prepared.name, prepared.message, **prepared.options)
        commands = self.buffer.take()
        if shape is not None:
            template = self._template(commands, prepared.task_id)
            if template is not None:
                self._templates[shape] = template
        return prepared.task_id, commands

    def _shape(self, request: TaskRequest) -> tuple[Any, ...] | None:
        options = request.options
        if set(options) - {"queue", "priority", "task_id"} or self.app.current_worker_task:
            return None
        if (
            signals.before_task_publish.receivers
            or signals.after_task_publish.receivers
            or signals.task_sent.receivers
        ):
            return None
        return (request.task_name, options.get("queue"), options.get("priority"), self.app.thread_oid)

    def _template(self, commands: list[Command], task_id: str) -> _Template | None:
        pushes = [args for name, args in commands if name == "lpush"]
        events = [args for name, args in commands if name == "publish"]
        if len(pushes) != 1 or len(events) > 1 or len(pushes) + len(events) != len(commands):
            return None  # e.g. queues with x-expires: keep Celery's path
        key, payload = pushes[0]
        message = json.loads(payload)
        headers, properties = message["headers"], message["properties"]
        if message.get("content-type") != "application/json" or headers.get("compression"):
            return None
        if headers.get("id") != task_id or properties.get("correlation_id") != task_id:
            return None
        root_is_id = headers.get("root_id") == task_id
        body_encoding = properties.get("body_encoding")
        embed = json.loads(self._decode(message["body"], body_encoding))[2]
        holes = _holes("args", "kwargs")
        body = _JsonTemplate([holes["args"], holes["kwargs"], embed], holes)
        places = {
            "body": ("body",),
            "id": ("headers", "id"),
            "argsrepr": ("headers", "argsrepr"),
            "kwargsrepr": ("headers", "kwargsrepr"),
            "correlation_id": ("properties", "correlation_id"),
            "delivery_tag": ("properties", "delivery_tag"),
        }
        if root_is_id:
            places["root_id"] = ("headers", "root_id")
        template = _Template(
            key=key,
            body_encoding=body_encoding,
            body=body,
            message=self._with_holes(message, places),
            root_is_id=root_is_id,
        )
        if events:
            topic, event_payload = events[0]
            event = json.loads(event_payload)
            if event.get("content-type") != "application/json":
                return None
            encoding = event["properties"].get("body_encoding")
            event_body = json.loads(self._decode(event["body"], encoding))
            body_places = {
                name: (name,) for name in ("uuid", "args", "kwargs", "clock", "utcoffset", "timestamp")
            }
            if root_is_id:
                body_places["root_id"] = ("root_id",)
            template.event_topic = topic
            template.event_body_encoding = encoding
            template.event_body = self._with_holes(event_body, body_places)
            template.event = self._with_holes(
                event, {"body": ("body",), "delivery_tag": ("properties", "delivery_tag")}
            )
        return template

    @staticmethod
    def _with_holes(value: dict[str, Any], places: Mapping[str, tuple[str, ...]]) -> _JsonTemplate:
        holes = _holes(*places)
        for name, path in places.items():
            _set(value, path, holes[name])
        return _JsonTemplate(value, holes)

    def _from_template(self, template: _Template, request: TaskRequest) -> tuple[str, list[Command]]:
        app = self.app
        encode = json_text
        task_id = request.options.get("task_id") or uuid()
        args, kwargs = request.args or (), request.kwargs or {}  # as Celery's as_task_v2 does
        argsrepr = _EMPTY_REPR.get(type(args)) if not args else None
        if argsrepr is None:
            argsrepr = saferepr(args, app.amqp.argsrepr_maxsize, maxlevels=app.conf.task_repr_maxlevels)
        kwargsrepr = _EMPTY_REPR.get(type(kwargs)) if not kwargs else None
        if kwargsrepr is None:
            kwargsrepr = saferepr(kwargs, app.amqp.kwargsrepr_maxsize, maxlevels=app.conf.task_repr_maxlevels)
        id_text, argsrepr_text, kwargsrepr_text = encode(task_id), encode(argsrepr), encode(kwargsrepr)
        body = template.body.render({"args": encode(args), "kwargs": encode(kwargs)})
        payload = template.message.render(
            {
                "body": encode(self._encode_body(body, template.body_encoding)),
                "id": id_text,
                "root_id": id_text,
                "correlation_id": id_text,
                "argsrepr": argsrepr_text,
                "kwargsrepr": kwargsrepr_text,
                "delivery_tag": encode(uuid()),
            }
        )
        commands: list[Command] = [("lpush", (template.key, payload))]
        if template.event is not None and template.event_body is not None:
            event_body = template.event_body.render(
                {
                    "uuid": id_text,
                    "root_id": id_text,
                    "args": argsrepr_text,
                    "kwargs": kwargsrepr_text,
                    "clock": encode(app.clock.forward()),
                    "utcoffset": encode(utcoffset()),
                    "timestamp": encode(time.time()),
                }
            )
            event = template.event.render(
                {
                    "body": encode(self._encode_body(event_body, template.event_body_encoding)),
                    "delivery_tag": encode(uuid()),
                }
            )
            commands.append(("publish", (template.event_topic, event)))
        return task_id, commands

    def _decode(self, body: Any, body_encoding: str | None) -> Any:
        return self.channel.decode_body(body, body_encoding)  # type: ignore[no-untyped-call]

    def _encode_body(self, text: str, body_encoding: str | None) -> Any:
        encoded, _ = self.channel.encode_body(text, body_encoding)  # type: ignore[no-untyped-call]
        return encoded


def pipeline_commands(commands: list[Command]) -> list[Command]:
    """Fold the pushes of a MULTI/EXEC chunk into one LPUSH per queue key (values keep
    their order, so consumers see the same order), followed by the other commands
    (expiry, event PUBLISHes) in their original order. Nothing can observe the order
    inside a transaction, so only the number of commands changes."""
    pushes: dict[Any, list[Any]] = {}
    others: list[Command] = []
    for name, args in commands:
        if name == "lpush":
            pushes.setdefault(args[0], []).extend(args[1:])
        else:
            others.append((name, args))
    return [("lpush", (key, *values)) for key, values in pushes.items()] + others
