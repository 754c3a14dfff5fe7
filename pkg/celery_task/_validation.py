"""Checking what a caller asks to send, before anything is sent or stored (no I/O).

The functions are pure; :class:`Validator` binds them to one Celery app: its task
registry (names and parameters), its routes, its timezone and soft time limit, and the
prefixes of the Redis keys the system itself uses (a queue must not be named like one).
Every refusal is an :class:`InvalidRequestError` naming the field and what is accepted.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from functools import cached_property
from typing import Any

from celery import Celery
from kombu.utils.json import dumps as _kombu_json_dumps
from redbeat.schedulers import ensure_conf

from ._errors import InvalidArgumentsError, InvalidPriorityError, InvalidRequestError, UnknownTaskError
from ._flow import FLOW_KEY_HEADER, check_flow_key
from ._limits import (
    MAX_DELAY,
    MAX_EXPIRES,
    MAX_PRIORITY,
    MIN_PRIORITY,
    check_json_value,
    check_queue_name,
    check_seconds,
    check_task_id,
    check_time,
)
from ._options import DEFAULT_MAX_ARGUMENT_BYTES, options_of
from ._request import TaskRequest, json_text

__all__ = [
    "MAX_OFFSET",
    "MAX_PAGE_SIZE",
    "Validator",
    "check_json_arguments",
    "check_page",
    "check_priority",
    "check_time_limits",
    "describe_parameters",
    "kombu_json_dumps",
    "send_options",
]

#: Most entries one page of a list (periodic tasks, dead letters) returns.
MAX_PAGE_SIZE = 1000
#: Largest offset a page may start at (Redis ranges are 64-bit; no list is this long).
MAX_OFFSET = 10**9


def kombu_json_dumps(value: Any) -> str:
    """Serialise as Celery's JSON serializer would (datetimes, UUIDs, Decimals allowed)."""
    return str(_kombu_json_dumps(value))  # type: ignore[no-untyped-call]


def check_priority(priority: Any) -> int | None:
    """Validate a priority on the 0 (lowest) .. 9 (highest) scale."""
    if priority is None:
        return None
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not (MIN_PRIORITY <= priority <= MAX_PRIORITY)
    ):
        raise InvalidPriorityError(
            f"priority must be an integer from {MIN_PRIORITY} (lowest) to "
            f"{MAX_PRIORITY} (highest); got {priority!r}",
            field="priority",
        )
    return priority


def check_json_arguments(
    args: Sequence[Any], kwargs: Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES
) -> None:
    """Refuse task arguments that the JSON serializer cannot send (naming the first
    one), that nest too deeply, hold NaN/Infinity, or whose JSON exceeds ``max_bytes``."""
    check_json_value(args, field="args", members=True)
    check_json_value(kwargs, field="kwargs", members=True)
    for key in kwargs:
        if not isinstance(key, str):
            raise InvalidArgumentsError(
                f"kwargs keys must be strings (they are argument names); got {key!r}", field="kwargs"
            )
    try:
        size = len(json_text([list(args), dict(kwargs)]))
    except (TypeError, ValueError):
        size = -1
    if size > max_bytes:
        raise InvalidArgumentsError(
            f"args and kwargs take {size} bytes as JSON; at most {max_bytes} are accepted: "
            "pass ids of stored data instead of the data",
            field="args",
        )
    if size >= 0:
        return
    for label, value in [
        *((f"args[{i}]", v) for i, v in enumerate(args)),
        *((f"kwargs[{k!r}]", v) for k, v in kwargs.items()),
    ]:
        try:
            kombu_json_dumps(value)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentsError(
                f"{label} of type {type(value).__name__} cannot be sent as JSON ({exc}); "
                "pass JSON values (str, int, float, bool, None, list, dict) such as ids",
                field="args" if label.startswith("args") else "kwargs",
            ) from exc
    raise InvalidArgumentsError("task arguments cannot be sent as JSON", field="args")


def check_page(limit: Any, offset: Any) -> None:
    """``limit`` 1..1000 and ``offset`` 0..10**9, as every list endpoint takes them."""
    for name, value, low, high in (("limit", limit, 1, MAX_PAGE_SIZE), ("offset", offset, 0, MAX_OFFSET)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidRequestError(
                f"{name} must be an integer from {low} to {high}; got {value!r}", field=name
            )


def check_time_limits(options: Mapping[str, Any], soft_default: float | None) -> None:
    """Celery arms the hard limit only once the soft one has passed: a hard limit at or
    below the soft limit in force (``soft_default`` unless given) would not apply."""
    for name in ("soft_time_limit", "time_limit"):
        value = options.get(name)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise InvalidRequestError(f"{name} must be a number of seconds > 0; got {value!r}", field=name)
    hard = options.get("time_limit")
    soft = options.get("soft_time_limit", soft_default)
    if hard is not None and soft is not None and soft >= hard:
        raise InvalidRequestError(
            f"time_limit {hard} s must exceed the soft time limit in force ({soft} s); "
            "pass a smaller soft_time_limit too",
            field="time_limit",
        )


def send_options(
    request: TaskRequest,
    *,
    tz: tzinfo,
    check_queue: Callable[[Any], str],
    soft_default: float | None = None,
) -> dict[str, Any]:
    """The checked options of ``request`` as ``send_task`` takes them: ids, queue,
    priority, delays and expiry within their bounds (naive times read in ``tz``)."""
    options = dict(request.options or {})
    task_id, queue, priority = request.task_id, request.queue, request.priority
    countdown, eta, expires = request.countdown, request.eta, request.expires
    if task_id is not None:
        check_task_id(task_id)
    if queue is not None:
        check_queue(queue)
    if options.get("queue") is not None:
        check_queue(options["queue"])
    check_priority(priority if priority is not None else options.get("priority"))
    if countdown is not None and eta is not None:
        raise InvalidRequestError("give countdown or eta, not both", field="countdown")
    now = datetime.now(UTC)
    if countdown is not None:
        check_seconds(countdown, field="countdown", minimum=0, maximum=MAX_DELAY.total_seconds())
    if eta is not None:
        eta = check_time(eta, field="eta", tz=tz, latest=now + MAX_DELAY)
    if isinstance(expires, datetime):
        expires = check_time(expires, field="expires", tz=tz, latest=now + MAX_EXPIRES)
    elif expires is not None:
        check_seconds(
            expires, field="expires", minimum=0, maximum=MAX_EXPIRES.total_seconds(), inclusive_minimum=False
        )
    check_time_limits(options, soft_default)
    flow_key = options.pop("flow_key", None)
    if flow_key is not None:
        headers = options.get("headers") or {}
        options["headers"] = {**headers, FLOW_KEY_HEADER: check_flow_key(flow_key)}
    given = {
        "task_id": task_id,
        "queue": queue,
        "priority": priority,
        "countdown": countdown,
        "eta": eta,
        "expires": expires,
    }
    options.update({key: value for key, value in given.items() if value is not None})
    return options


def describe_parameters(signature: inspect.Signature) -> str:
    """``x, y, *rest, z=1`` without annotations: what a caller of the task may pass."""
    parts = []
    for parameter in signature.parameters.values():
        shown = parameter.name
        if parameter.kind is parameter.VAR_POSITIONAL:
            shown = "*" + shown
        elif parameter.kind is parameter.VAR_KEYWORD:
            shown = "**" + shown
        elif parameter.default is not parameter.empty:
            shown += "=" + repr(parameter.default)
        parts.append(shown)
    return ", ".join(parts)


class Validator:
    """The checks above bound to one app: its registry, routes, timezone and key space."""

    def __init__(self, app: Celery, *, default_queue: str) -> None:
        self.app = app
        self.default_queue = default_queue
        self.registry_loaded = False
        self._routes: dict[str, str] = {}
        self._signatures: dict[str, inspect.Signature] = {}

    # -- the task registry -----------------------------------------------------------

    def load_tasks(self) -> list[str]:
        """Import the app's task modules so names and parameters can be checked; a
        module that fails to import raises. The registered task names."""
        self.app.loader.import_default_modules()
        self.app.finalize()
        self.registry_loaded = True
        return sorted(name for name in self.app.tasks if not name.startswith("celery."))

    def public_tasks(self) -> list[str]:
        """Tasks marked ``public=True`` (never Celery's own ``celery.*``)."""
        return sorted(name for name in self.app.tasks if self.is_public(name))

    def is_public(self, task_name: str) -> bool:
        """True if ``task_name`` is registered and marked public."""
        task = self.app.tasks.get(task_name)
        return (
            task is not None
            and getattr(task, "public", False) is True
            and not task_name.startswith("celery.")
        )

    def resolve_queue(self, task_name: str, queue: str | None = None) -> str:
        """``queue`` if given, else the task's route (remembered: routes are fixed)."""
        if queue:
            return queue
        resolved = self._routes.get(task_name)
        if resolved is None:
            target = self.app.amqp.router.route({}, task_name).get("queue")
            resolved = self._routes[task_name] = str(getattr(target, "name", target) or self.default_queue)
        return resolved

    def check_task_name(self, task_name: Any) -> str:
        """A non-empty name, and (with the registry loaded) a registered one."""
        if not isinstance(task_name, str) or not task_name.strip():
            raise InvalidRequestError(
                f"task name must be a non-empty string; got {task_name!r}", field="task"
            )
        if self.registry_loaded and task_name not in self.app.tasks:
            known = sorted(n for n in self.app.tasks if not n.startswith("celery."))
            raise UnknownTaskError(task_name, known=known)
        return task_name

    def check_signature(self, task_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """With the registry loaded, refuse arguments the task's own parameters cannot
        take (the worker would fail with a message counting the bound ``self``)."""
        if not self.registry_loaded:
            return
        signature = self._signatures.get(task_name)
        if signature is None:
            task = self.app.tasks.get(task_name)
            if task is None or not getattr(task, "typing", True):  # typing=False: any arguments
                return
            try:
                signature = inspect.signature(task.run)
            except (TypeError, ValueError):
                return
            self._signatures[task_name] = signature
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArgumentsError(
                f"{task_name} takes ({describe_parameters(signature)}); got {len(args)} positional "
                f"argument(s) and keyword(s) {sorted(kwargs)}: {exc}",
                field="args",
            ) from None

    def check_arguments(self, task_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """JSON-safe, within the size limit, and fitting the task's parameters."""
        check_json_arguments(args, kwargs, max_bytes=options_of(self.app).max_argument_bytes)
        self.check_signature(task_name, args, kwargs)

    # -- queues ----------------------------------------------------------------------

    @cached_property
    def reserved_queue_prefixes(self) -> tuple[str, ...]:
        """Prefixes of the Redis keys the system itself uses: result, group and chord
        keys, kombu's bindings, our unacked index and kombu's default one (stock workers
        and the legacy sweep use it), the schedule and this package's state."""
        conf = self.app.conf
        transport = conf.broker_transport_options or {}
        prefixes = {
            "celery-task-meta-",
            "celery-taskset-meta-",
            "chord-unlock",
            "_kombu",
            "unacked",
            "celeryev",
            str(transport.get("unacked_key") or "unacked"),
            str(transport.get("unacked_index_key") or "unacked_index"),
            str(transport.get("unacked_mutex_key") or "unacked_mutex"),
            options_of(self.app).key_prefix,
            str(ensure_conf(self.app).key_prefix),
        }
        backend = self.app.backend
        for name in ("task_keyprefix", "group_keyprefix", "chord_keyprefix"):
            value = getattr(backend, name, None)
            if value:
                prefixes.add(value.decode() if isinstance(value, bytes) else str(value))
        return tuple(sorted(p for p in prefixes if p))

    def check_queue(self, queue: Any, *, field: str = "queue") -> str:
        """A queue name this client will send to: 1-200 of ``A-Z a-z 0-9 _ . : -``, and
        never a name the system's own Redis keys start with."""
        name = check_queue_name(queue, self.reserved_queue_prefixes, field=field)
        if name.endswith(".pidbox"):
            raise InvalidRequestError(
                f"{field} {name!r} is reserved: names ending in '.pidbox' are Celery's remote-control queues",
                field=field,
            )
        return name

    # -- whole requests --------------------------------------------------------------

    def validated(self, request: TaskRequest) -> TaskRequest:
        """Check one request; the result carries the options ``send_task`` takes."""
        self.check_task_name(request.task_name)
        args = list(request.args or ())
        kwargs = dict(request.kwargs or {})
        self.check_arguments(request.task_name, args, kwargs)
        options = send_options(
            request,
            tz=self.app.timezone,
            check_queue=self.check_queue,
            soft_default=self.app.conf.task_soft_time_limit,
        )
        return TaskRequest(request.task_name, args, kwargs, options=options)

    def signature_parts(
        self,
        task_name: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any],
    ) -> tuple[list[Any], dict[str, Any]]:
        """Check one step of a workflow; its args and kwargs as lists and dicts."""
        self.check_task_name(task_name)
        args_list, kwargs_dict = list(args or ()), dict(kwargs or {})
        check_json_arguments(args_list, kwargs_dict)
        check_priority(options.get("priority"))
        return args_list, kwargs_dict
