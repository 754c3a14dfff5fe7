"""Flow control shared by every worker and host: global and per-key rate limits and
concurrency limits, kept in Redis.

A task declares its limits as options (``global_rate_limit="10/s"``,
``rate_limit_per_key="5/s"``, ``concurrency_limit=3``, ``concurrency_limit_per_key=1``);
an override stored in Redis (``set_limits``) replaces them at runtime. Workers take a
start permit from one Lua script before a task reaches the pool: rate limits are a
sliding log of start times per task (and per ``flow_key``), concurrency limits a set of
leases that the worker's heartbeat renews and its acknowledgement releases.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import redis
from celery import Celery

from ._errors import InvalidRequestError, unreachable
from ._limits import check_entry_name, shown
from ._options import options_of
from ._redis import clients_for

__all__ = [
    "FLOW_KEY_HEADER",
    "LIMIT_NAMES",
    "MAX_CONCURRENCY",
    "MAX_RATE_COUNT",
    "THROTTLED",
    "WINDOW_MARGIN",
    "FlowKeys",
    "FlowLimitStore",
    "Limits",
    "Rate",
    "check_flow_key",
    "parse_rate",
]

#: The state a task shows while it waits for a start permit (it holds no worker slot).
THROTTLED = "THROTTLED"
#: The message header carrying the caller's ``flow_key``.
FLOW_KEY_HEADER = "tasksys_flow_key"
#: The task options (and ``set_limits`` keywords) this module reads.
LIMIT_NAMES = ("global_rate_limit", "rate_limit_per_key", "concurrency_limit", "concurrency_limit_per_key")
#: Most starts one rate may allow per window (the sliding log holds one entry per start).
MAX_RATE_COUNT = 100_000
#: Most tasks a concurrency limit may let run at once.
MAX_CONCURRENCY = 100_000
#: Added to every rate window. A start counts in every window from its permit until the
#: worker re-stamps it with the time its pool started the task (Celery's
#: ``time_start``); the margin covers the few milliseconds from that moment to the
#: first line of the task body, which is where starts are measured.
WINDOW_MARGIN = 0.05

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"\s*(\d{1,7})\s*/\s*(s|m|h)\s*")


@dataclass(frozen=True)
class Rate:
    """``count`` starts per ``window`` seconds."""

    count: int
    window: float

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}[self.window]
        return f"{self.count}/{unit}"


def parse_rate(value: Any, *, field: str) -> Rate | None:
    """``"10/s"``, ``"600/m"`` or ``"5/h"`` (``None``: no limit)."""
    if value is None:
        return None
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    count = int(match.group(1)) if match else 0
    if not match or not 1 <= count <= MAX_RATE_COUNT:
        raise InvalidRequestError(
            f"{field} must be a rate like '10/s', '600/m' or '5/h' with a count from 1 to "
            f"{MAX_RATE_COUNT}; got {shown(value)}",
            field=field,
        )
    return Rate(count, _UNITS[match.group(2)])


def _concurrency(value: Any, *, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        raise InvalidRequestError(
            f"{field} must be a whole number from 1 to {MAX_CONCURRENCY}; got {shown(value)}", field=field
        )
    return value


@dataclass(frozen=True)
class Limits:
    """The flow limits of one task name (``None``: that limit is off)."""

    global_rate_limit: Rate | None = None
    rate_limit_per_key: Rate | None = None
    concurrency_limit: int | None = None
    concurrency_limit_per_key: int | None = None

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> Limits:
        """Limits from option values (rates as text), refusing unknown names."""
        unknown = set(values) - set(LIMIT_NAMES)
        if unknown:
            raise InvalidRequestError(
                f"unknown flow limit {sorted(unknown)[0]!r}; accepted: {', '.join(LIMIT_NAMES)}",
                field=sorted(unknown)[0],
            )
        return cls(
            parse_rate(values.get("global_rate_limit"), field="global_rate_limit"),
            parse_rate(values.get("rate_limit_per_key"), field="rate_limit_per_key"),
            _concurrency(values.get("concurrency_limit"), field="concurrency_limit"),
            _concurrency(values.get("concurrency_limit_per_key"), field="concurrency_limit_per_key"),
        )

    @classmethod
    def of_task(cls, task: Any) -> Limits:
        """The limits a task class declares as options."""
        return cls.parse({name: getattr(task, name, None) for name in LIMIT_NAMES})

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    @property
    def uses_key(self) -> bool:
        """Whether a limit applies per ``flow_key``."""
        return self.rate_limit_per_key is not None or self.concurrency_limit_per_key is not None

    @property
    def has_concurrency(self) -> bool:
        """Whether a start takes a lease that must be released."""
        return self.concurrency_limit is not None or self.concurrency_limit_per_key is not None

    def as_dict(self) -> dict[str, Any]:
        """JSON form: rates as text (``"10/s"``), counts as numbers, ``None`` when off."""
        return {
            "global_rate_limit": _text(self.global_rate_limit),
            "rate_limit_per_key": _text(self.rate_limit_per_key),
            "concurrency_limit": self.concurrency_limit,
            "concurrency_limit_per_key": self.concurrency_limit_per_key,
        }


def _text(rate: Rate | None) -> str | None:
    return None if rate is None else str(rate)


def check_flow_key(value: Any, *, field: str = "flow_key") -> str:
    """A ``flow_key``: the periodic-name rule (1-200 letters, digits, ``_ . : - * / , +``
    and inner spaces), so it can never reach outside its own Redis keys."""
    return check_entry_name(value, field=field)


class FlowKeys:
    """The Redis keys of flow control under the app's key prefix. Task names and flow
    keys are joined with ``|``, which a flow key never contains, so no two (task, key)
    pairs share a key."""

    def __init__(self, prefix: str) -> None:
        self.prefix = f"{prefix}flow:"
        self.limits = f"{self.prefix}limits"
        self.throttled = f"{self.prefix}throttled"

    def rate(self, task: str, flow_key: str | None = None) -> str:
        """The start log of a task (or of one key of it)."""
        return f"{self.prefix}rate:g:{task}" if flow_key is None else f"{self.prefix}rate:k:{task}|{flow_key}"

    def slots(self, task: str, flow_key: str | None = None) -> str:
        """The running leases of a task (or of one key of it)."""
        return (
            f"{self.prefix}slots:g:{task}" if flow_key is None else f"{self.prefix}slots:k:{task}|{flow_key}"
        )


class FlowLimitStore:
    """Runtime overrides of task limits, in one Redis hash every worker reads."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.keys = FlowKeys(options_of(app).key_prefix)

    @property
    def _redis(self) -> redis.Redis:
        return clients_for(self.app).state()

    def _task(self, task: str) -> Any:
        registered = self.app.tasks.get(task) if isinstance(task, str) else None
        if registered is None:
            raise InvalidRequestError(f"unknown task {shown(task)}", field="task")
        return registered

    def declared(self, task: str) -> Limits:
        """The limits the task's code declares."""
        return Limits.of_task(self._task(task))

    def set(self, task: str, limits: Mapping[str, Any]) -> Limits:
        """Replace the task's limits at runtime (every worker applies it within ~1 s);
        omitted or ``None`` names are off."""
        self._task(task)
        parsed = Limits.parse(limits)
        with unreachable("could not store the limits", self.app.conf.broker_url):
            self._redis.hset(self.keys.limits, task, json.dumps(parsed.as_dict()))
        return parsed

    def reset(self, task: str) -> Limits:
        """Drop the task's runtime override: its declared limits apply again."""
        declared = self.declared(task)
        with unreachable("could not reset the limits", self.app.conf.broker_url):
            self._redis.hdel(self.keys.limits, task)
        return declared

    def overrides(self) -> dict[str, Limits]:
        """Every stored override (an unreadable one is skipped)."""
        with unreachable("could not read the limits", self.app.conf.broker_url):
            raw = self._redis.hgetall(self.keys.limits)
        return overrides_from(raw)

    def listing(self) -> list[dict[str, Any]]:
        """Every registered task with limits (declared or overridden): name, limits,
        ``source`` (``declared`` or ``runtime``) and the throttled count."""
        with (
            unreachable("could not read the limits", self.app.conf.broker_url),
            self._redis.pipeline(transaction=False) as pipe,
        ):
            pipe.hgetall(self.keys.limits)
            pipe.hgetall(self.keys.throttled)
            raw, throttled = pipe.execute()
        overrides = overrides_from(raw)
        rows = []
        for name in sorted(self.app.tasks):
            if name.startswith("celery."):
                continue
            declared = Limits.of_task(self.app.tasks[name])
            limits = overrides.get(name, declared)
            if name not in overrides and not declared:
                continue
            rows.append(
                {
                    "task": name,
                    **limits.as_dict(),
                    "source": "runtime" if name in overrides else "declared",
                    "throttled": int(throttled.get(name, 0)),
                }
            )
        return rows

    def throttled_counts(self) -> dict[str, int]:
        """Start permits refused per task (each waiting task counted once)."""
        with unreachable("could not read the throttled counts", self.app.conf.broker_url):
            raw = self._redis.hgetall(self.keys.throttled)
        return {_str(k): int(v) for k, v in raw.items()}


def overrides_from(raw: Mapping[Any, Any]) -> dict[str, Limits]:
    """Parse the stored override hash, skipping entries that do not parse."""
    parsed: dict[str, Limits] = {}
    for name, text in raw.items():
        try:
            parsed[_str(name)] = Limits.parse(json.loads(text))
        except (ValueError, TypeError, AttributeError):
            continue
    return parsed


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
