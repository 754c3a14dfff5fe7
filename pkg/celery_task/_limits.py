"""Bounds and name rules for everything a caller hands the client.

Every user-supplied name ends up inside a Redis key, and every value inside a message
that a worker must decode, pickle to its pool and log. So names are checked against
one character set and the prefixes the system's own keys use, and values against a
nesting depth, finiteness and time ranges, before anything is sent or stored. Each
check raises :class:`InvalidRequestError` (a ``ValueError``) naming the field, what
was wrong and what is accepted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from ._errors import InvalidArgumentsError, InvalidRequestError

__all__ = [
    "EARLIEST_TIME",
    "ENTRY_NAME_PATTERN",
    "ID_PATTERN",
    "MAX_ARGUMENT_DEPTH",
    "MAX_DELAY",
    "MAX_ENTRY_NAME_LENGTH",
    "MAX_EXPIRES",
    "MAX_INTERVAL",
    "MAX_PRIORITY",
    "MAX_QUEUE_NAME_LENGTH",
    "MAX_RECEIVED_DEPTH",
    "MAX_TASK_ID_LENGTH",
    "MIN_INTERVAL",
    "MIN_PRIORITY",
    "check_entry_name",
    "check_json_value",
    "check_queue_name",
    "check_seconds",
    "check_task_id",
    "check_time",
    "escape_control",
    "in_zone",
    "shown",
]

#: The one priority scale on every broker: 0 (lowest) .. 9 (highest).
MIN_PRIORITY = 0
MAX_PRIORITY = 9
#: Deepest nesting of lists/dicts in task arguments. Workers pickle a message to hand
#: it to a pool process, and pickling recurses: a few hundred levels crash it.
MAX_ARGUMENT_DEPTH = 32
#: Deepest nesting a worker runs (it refuses deeper arguments as invalid): the same
#: limit on every pool, where pickling or decoding would otherwise fail at a depth that
#: depends on the pool; above the client's limit, so canvas callbacks that receive
#: other tasks' results still run.
MAX_RECEIVED_DEPTH = 100
MAX_TASK_ID_LENGTH = 255
MAX_QUEUE_NAME_LENGTH = 200
MAX_ENTRY_NAME_LENGTH = 200
#: Furthest a countdown or ETA may reach; a worker holds an ETA task in memory until due.
MAX_DELAY = timedelta(days=30)
#: Furthest an expiry may reach.
MAX_EXPIRES = timedelta(days=366)
#: Interval schedules: beat stores whole milliseconds, and a year is the longest period.
MIN_INTERVAL = timedelta(milliseconds=1)
MAX_INTERVAL = timedelta(days=366)
#: Times before this are refused (older dates get local-mean-time offsets and break ETAs).
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)

#: Task ids and queue names (whole string).
ID_PATTERN = r"[A-Za-z0-9_.:\-]+"
#: Periodic entry names (whole string): no leading ``:``, no surrounding spaces.
ENTRY_NAME_PATTERN = r"[A-Za-z0-9_](?:[A-Za-z0-9_.:\-*/,+ ]*[A-Za-z0-9_.:\-*/,+])?"
_ID = re.compile(ID_PATTERN)
_ENTRY = re.compile(ENTRY_NAME_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_task_id(task_id: Any, *, field: str = "task_id") -> str:
    """A task id: 1-255 of ``A-Z a-z 0-9 _ . : -`` (the HTTP API's rule too)."""
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_TASK_ID_LENGTH:
        raise InvalidRequestError(
            f"{field} must be a non-empty string of at most {MAX_TASK_ID_LENGTH} characters; "
            f"got {shown(task_id)}",
            field=field,
        )
    if not _ID.fullmatch(task_id):
        raise InvalidRequestError(
            f"{field} may contain only letters, digits and _ . : -; got {shown(task_id)}",
            field=field,
        )
    return task_id


def check_queue_name(queue: Any, reserved: Iterable[str], *, field: str = "queue") -> str:
    """A queue name: 1-200 of ``A-Z a-z 0-9 _ . : -``, not starting with a prefix the
    system's own Redis keys use (results, bindings, unacked index, schedule, state)."""
    if not isinstance(queue, str) or not queue.strip():
        raise InvalidRequestError(f"{field} must be a non-empty string; got {shown(queue)}", field=field)
    if len(queue) > MAX_QUEUE_NAME_LENGTH or not _ID.fullmatch(queue):
        raise InvalidRequestError(
            f"{field} must be at most {MAX_QUEUE_NAME_LENGTH} letters, digits or _ . : -; got {shown(queue)}",
            field=field,
        )
    for prefix in reserved:
        if queue.startswith(prefix):
            raise InvalidRequestError(
                f"{field} {queue!r} is reserved: names starting with {prefix!r} are the "
                "system's own Redis keys",
                field=field,
            )
    return queue


def check_entry_name(name: Any, *, field: str = "name") -> str:
    """A periodic entry name: 1-200 characters of letters, digits and ``_ . : - * / , +``
    and inner spaces, starting with a letter, digit or ``_`` (so it can never address
    the scheduler's own ``:schedule``, ``:statics`` or ``:lock`` keys)."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_ENTRY_NAME_LENGTH:
        raise InvalidRequestError(
            f"{field} must be a non-empty string of at most {MAX_ENTRY_NAME_LENGTH} "
            f"characters; got {shown(name)}",
            field=field,
        )
    if not _ENTRY.fullmatch(name):
        raise InvalidRequestError(
            f"{field} {shown(name)} is not accepted: use letters, digits, _ . : - * / , + and "
            "inner spaces, starting with a letter, digit or _, with no surrounding spaces",
            field=field,
        )
    return name


def check_json_value(
    value: Any,
    *,
    field: str,
    max_depth: int = MAX_ARGUMENT_DEPTH,
    members: bool = False,
    finite: bool = True,
) -> None:
    """Refuse nesting deeper than ``max_depth`` lists/dicts and (with ``finite``) floats
    that are not finite (NaN and Infinity are not JSON), naming where in ``field`` they
    are. With ``members``, ``value`` is a container of values (args, kwargs) and each
    member gets ``max_depth`` levels. Iterative, so a hostile depth cannot overflow the
    stack here."""
    stack: list[tuple[Any, int, str]] = [(value, -1 if members else 0, field)]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, float):
            if not finite:
                continue
            if not math.isfinite(item):
                raise InvalidArgumentsError(
                    f"{where} is {item!r}, which is not JSON; pass finite numbers", field=field
                )
            continue
        if isinstance(item, str | int | bool) or item is None:
            continue
        if isinstance(item, Mapping):
            pairs: Iterable[tuple[Any, Any]] = item.items()
            index = "{!r}"
        elif isinstance(item, list | tuple):
            pairs, index = enumerate(item), "{}"
        else:
            continue  # other types are the JSON encoder's to accept or refuse
        if depth >= max_depth:
            raise InvalidArgumentsError(
                f"{field} is nested more than {max_depth} levels deep (at {where}); "
                f"flatten it or pass an id to load the data from",
                field=field,
            )
        # Only members that can fail get a path: a long list of strings builds none (the
        # worker checks every message it receives).
        stack.extend(
            (child, depth + 1, f"{where}[{index.format(key)}]")
            for key, child in pairs
            if not (
                isinstance(child, str | int | bool)
                or child is None
                or (not finite and isinstance(child, float))
            )
        )


def check_seconds(
    value: Any, *, field: str, minimum: float, maximum: float, inclusive_minimum: bool = True
) -> float:
    """A finite number of seconds within ``[minimum, maximum]``."""
    low = ">=" if inclusive_minimum else ">"
    accepted = f"a finite number of seconds {low} {_number(minimum)} and <= {_number(maximum)}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"{field} must be {accepted}; got {shown(value)}", field=field)
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    too_low = seconds < minimum if inclusive_minimum else seconds <= minimum
    if not math.isfinite(seconds) or too_low or seconds > maximum:
        raise InvalidRequestError(f"{field} must be {accepted}; got {shown(value)}", field=field)
    return seconds


def in_zone(moment: datetime, tz: tzinfo) -> datetime:
    """``moment`` with a time zone: a naive one is read as a wall-clock time in ``tz``."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=tz)


def check_time(value: Any, *, field: str, tz: tzinfo, latest: datetime) -> datetime:
    """An aware datetime (naive = ``tz``) between 1970 and ``latest``."""
    if not isinstance(value, datetime):
        raise InvalidRequestError(f"{field} must be a datetime; got {shown(value)}", field=field)
    moment = in_zone(value, tz)
    try:
        in_range = EARLIEST_TIME <= moment.astimezone(UTC) <= latest
    except (OverflowError, ValueError):
        in_range = False
    if not in_range:
        raise InvalidRequestError(
            f"{field} must be between {EARLIEST_TIME:%Y-%m-%d} and "
            f"{latest.astimezone(UTC).isoformat(timespec='seconds')}; got {value.isoformat()}",
            field=field,
        )
    return moment


#: C0 controls, DEL and C1 controls, written as escapes so user data in a log line can
#: neither start a forged line nor send terminal escape sequences.
_ESCAPES: dict[int, str] = {
    code: {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(chr(code), f"\\x{code:02x}")
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]
}
_ESCAPES_KEEP_NEWLINE = {code: text for code, text in _ESCAPES.items() if code != 0x0A}


def escape_control(text: str, keep_newlines: bool = False) -> str:
    """``text`` with control characters written as escapes (``\\n``, ``\\x1b``...), so
    user data cannot forge or colour log lines; ``keep_newlines`` for tracebacks."""
    if not _CONTROL.search(text):
        return text
    return text.translate(_ESCAPES_KEEP_NEWLINE if keep_newlines else _ESCAPES)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def shown(value: Any) -> str:
    """A bounded repr for error messages (hostile input can be megabytes long)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
