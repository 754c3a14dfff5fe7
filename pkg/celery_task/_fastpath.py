"""Pipelined publishing of exactly the messages Celery's ``send_task`` publishes.

Celery's own code builds every message (``amqp.create_task_message``) and sends it
(``amqp.send_task_message``: routing, signals, the ``task-sent`` event) through a kombu
``Producer`` whose channel hands the Redis commands of each message to a buffer instead
of sending them, so kombu's Redis channel itself computes keys and priority sub-queues.
They then run in one pipeline per chunk (sync) or on redis.asyncio.

:func:`fast_path_supports` says which requests this reproduces exactly; the others go
through ``send_task``. Only the Redis transport is supported. The private Celery and
kombu names this relies on are in ``_compat`` (section "Publishing").
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery, signals
from celery.app.routes import MapRoute
from celery.utils.saferepr import saferepr
from celery.utils.time import subtract_datetimes, utcoffset
from kombu.messaging import Producer
from kombu.transport import redis as kombu_redis
from kombu.utils.uuid import uuid

from . import _compat
from ._request import TaskRequest, json_text

__all__ = [
    "FAST_OPTIONS",
    "RUN_COMMANDS_LUA",
    "SCRIPT_COMMANDS",
    "CommandBuffer",
    "MessageFactory",
    "PreparedTask",
    "fast_path_supports",
    "pipeline_commands",
    "prepare_task",
    "script_args",
]


@dataclass
class PreparedTask:
    """A task message built by Celery, ready for ``amqp.send_task_message``."""

    task_id: str
    name: str
    message: Any
    options: dict[str, Any]


#: Options the fast path passes through; anything else (links, chords, custom
#: exchanges, time limits, ...) goes through Celery's ``send_task`` unchanged.
FAST_OPTIONS = frozenset({"queue", "priority", "countdown", "eta", "expires", "task_id", "headers"})

#: ``send_task``'s marker for "not given": an explicit ``expires=None`` clears a task's
#: default expiry, an omitted one keeps it (likewise the time limits).
_OMITTED: Any = object()


def fast_path_supports(app: Celery, requests: Iterable[TaskRequest]) -> bool:
    """True if the fast path publishes for every validated request exactly what
    ``app.send_task(name, args, kwargs, **request.options)`` would, with the same side
    effects; otherwise send them with ``send_task``. What depends on the app, not the
    request, is checked once per call."""
    # Inside a running task send_task records the child in the parent's request after
    # the message is written, which a caller's pipeline would have to report back.
    if app.current_worker_task is not None or app.conf.task_always_eager:
        return False
    if not _compat.task_call_hook_skippable(app.backend):
        return False
    return all(_request_supported(app, request) for request in requests)


def _request_supported(app: Celery, request: TaskRequest) -> bool:
    options = request.options
    if not options.keys() <= FAST_OPTIONS:
        return False
    expires = options.get("expires")
    if isinstance(expires, datetime):
        return bool(subtract_datetimes(expires, app.now()).total_seconds() >= 0)  # else send_task warns
    return expires is None or (isinstance(expires, int | float) and expires >= 0)


def prepare_task(
    app: Celery,
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    task_id: str | None = None,
    countdown: float | None = None,
    eta: datetime | None = None,
    expires: Any = _OMITTED,
    time_limit: Any = _OMITTED,
    soft_time_limit: Any = _OMITTED,
    **options: Any,
) -> PreparedTask:
    """What ``Celery.send_task`` does before publishing, step by step: registry
    defaults, routing, expiry, parent ids, message (no group, chord, links, shadow)."""
    task_id = task_id or uuid()
    task_type = _compat.registered_task(app, name)
    if task_type is not None:
        defaults = _compat.task_exec_defaults(task_type)
        if defaults:
            options = dict(defaults, **options)
    default_time_limit = options.pop("time_limit", None)
    time_limit = default_time_limit if time_limit is _OMITTED else time_limit
    default_soft_time_limit = options.pop("soft_time_limit", None)
    soft_time_limit = default_soft_time_limit if soft_time_limit is _OMITTED else soft_time_limit
    default_expires = options.pop("expires", None)
    expires = default_expires if expires is _OMITTED else expires
    ignore_result = options.pop("ignore_result", None)
    options = app.amqp.router.route(options, name, args, kwargs, task_type)
    if expires is not None:
        if isinstance(expires, datetime):
            expires_s = subtract_datetimes(expires, app.now()).total_seconds()
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
    message = _compat.create_task_message(
        app,
        task_id=task_id,
        name=name,
        args=args,
        kwargs=kwargs,
        countdown=countdown,
        eta=eta,
        expires=expires,
        reply_to=app.thread_oid,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        create_sent_event=app.conf.task_send_sent_event,
        root_id=root_id,
        parent_id=parent_id,
        ignore_result=ignore_result,
        options=options,
    )
    for stamp in options.pop("stamped_headers", []):
        options.pop(stamp)
    return PreparedTask(task_id=task_id, name=name, message=message, options=options)


class CommandBuffer:
    """Collects the Redis commands kombu's channel emits for each published message
    (the ``add`` half of the publish-batch protocol of kombu's Redis transport)."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def add(self, name: str, *args: Any) -> None:
        """Called by the channel for each command (lpush, pexpire, publish)."""
        self.commands.append((name, args))

    def take(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The commands so far; the buffer is emptied."""
        commands, self.commands = self.commands, []
        return commands


class _BufferedChannel:
    """A kombu channel whose ``basic_publish`` puts the message's Redis commands in a
    :class:`CommandBuffer`; everything else (declaring, encoding) is the channel's."""

    def __init__(self, channel: kombu_redis.Channel, buffer: CommandBuffer) -> None:
        self._channel = channel
        self._buffer = buffer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    def basic_publish(self, message: Any, **publish_kwargs: Any) -> None:
        """Buffer the commands that publish ``message``."""
        _compat.publish_to_batch(self._channel, message, self._buffer, **publish_kwargs)


class _BufferingProducer(Producer):
    """kombu's ``Producer`` on a :class:`_BufferedChannel`, without publish retries: no
    command reaches Redis here, and a retry's reconnect would rebind it to a real
    channel (declaring does I/O once per entity; its errors reach the caller)."""

    def publish(self, body: Any, **options: Any) -> None:  # type: ignore[override]
        """``Producer.publish`` with ``retry`` off (Celery passes everything by name)."""
        options["retry"] = False
        super().publish(body, **options)  # type: ignore[no-untyped-call]


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
    :func:`prepare_task`); its output, decoded, becomes a template. Later messages of
    that shape copy the template and set only what differs per message, computed the way
    Celery computes it: task id, ``argsrepr`` and ``kwargsrepr`` (``saferepr``), the
    body, delivery tags, the event's logical clock and time. Messages with an ETA,
    countdown or expiry (the caller's or the task's default), sends from inside a task,
    apps with publish-signal receivers and apps whose routers are not plain
    ``task_routes`` mappings (a router function may look at the arguments) always take
    Celery's path.
    """

    def __init__(self, app: Celery, producer: Any) -> None:
        self.app = app
        #: Read once, like everything else a template captures from the configuration.
        self.repr_maxlevels = app.conf.task_repr_maxlevels
        self.buffer = CommandBuffer()
        self.channel: kombu_redis.Channel = producer.channel
        self.capture = _BufferingProducer(  # type: ignore[no-untyped-call]
            _BufferedChannel(self.channel, self.buffer),
            exchange=producer.exchange,
            routing_key=producer.routing_key,
            serializer=producer.serializer,
            compression=producer.compression,
            auto_declare=producer.auto_declare,
        )
        self._templates: dict[tuple[Any, ...], _Template] = {}
        self._static_routes = all(isinstance(route, MapRoute) for route in app.amqp.router.routes)

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
        if set(options) - {"queue", "priority", "task_id"} or not self._static_routes:
            return None
        if self.app.current_worker_task:
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
        if headers.get("eta") or headers.get("expires") or "expiration" in properties:
            return None  # times computed from the moment of sending (e.g. a task's expires)
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
            argsrepr = saferepr(args, app.amqp.argsrepr_maxsize, maxlevels=self.repr_maxlevels)
        kwargsrepr = _EMPTY_REPR.get(type(kwargs)) if not kwargs else None
        if kwargsrepr is None:
            kwargsrepr = saferepr(kwargs, app.amqp.kwargsrepr_maxsize, maxlevels=self.repr_maxlevels)
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


#: The commands one message's publish may run inside a Lua script: kombu's Redis
#: channel's (push, queue expiry, task-sent event) and the history ``sent`` record.
SCRIPT_COMMANDS = frozenset({"lpush", "pexpire", "publish", "xadd"})

#: Lua that runs the commands :func:`script_args` flattened into ``ARGV`` from the
#: local ``i`` on: per command its name, argument count and arguments.
RUN_COMMANDS_LUA = """
while i <= #ARGV do
  local count = tonumber(ARGV[i + 1])
  redis.call(ARGV[i], unpack(ARGV, i + 2, i + 1 + count))
  i = i + 2 + count
end
"""


def script_args(commands: Iterable[Command]) -> list[Any]:
    """``commands`` flattened for :data:`RUN_COMMANDS_LUA`; only :data:`SCRIPT_COMMANDS`."""
    args: list[Any] = []
    for name, command_args in commands:
        if name not in SCRIPT_COMMANDS:
            raise RuntimeError(f"unexpected publish command {name!r} inside a script")
        args += [name, len(command_args), *command_args]
    return args


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
