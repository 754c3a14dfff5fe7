"""The package's own settings, typed: one frozen :class:`Options` per Celery app.

They travel in the app's configuration as ``tasksys_*`` keys (so ``celery inspect
conf`` shows them and a worker built from the same module gets the same values), but
no module reads those keys itself: each asks :func:`options_of` for the typed, checked
values. Changing one at runtime goes through :func:`configure`, which keeps the two in
step.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from celery import Celery

from ._errors import InvalidRequestError

__all__ = ["CONF_PREFIX", "DEFAULT_MAX_ARGUMENT_BYTES", "Options", "configure", "options_of"]

#: Prefix of the package's keys in Celery's configuration.
CONF_PREFIX = "tasksys_"
#: Largest JSON text of one task's args and kwargs that submit accepts.
DEFAULT_MAX_ARGUMENT_BYTES = 16 * 1024 * 1024


def _worker_backend_retry_policy() -> dict[str, float]:
    return {"max_retries": 60, "interval_start": 0.0, "interval_step": 0.5, "interval_max": 1.0}


@dataclass(frozen=True, slots=True)
class Options:
    """Settings of this package (``tasksys_<field>`` in Celery's configuration)."""

    #: Redis holding the schedule, revokes, dead letters and task-id claims.
    redis_url: str
    #: Prefix of this package's keys on that Redis.
    key_prefix: str = "tasksys:"
    #: Seconds a revoke is remembered (workers started later still honour it).
    revoke_expires: float = 3 * 24 * 3600
    #: Seconds between refreshes of held messages; None: a sixth of the visibility timeout.
    unacked_heartbeat_interval: float | None = None
    #: Workers restore entries of kombu's default unacked index older than this (what
    #: stock workers leave); 0 turns that sweep off.
    legacy_unacked_timeout: float = 3600
    #: How workers retry result stores through a Redis restart (producers fail fast).
    worker_backend_retry_policy: Mapping[str, float] = field(default_factory=_worker_backend_retry_policy)
    #: Most redis.asyncio connections per event loop.
    async_max_connections: int = 50
    #: Worker task events go out at most this late (s) and in batches of this many.
    event_flush_interval: float = 0.1
    event_buffer_limit: int = 200
    #: STARTED is stored only for tasks still running after this many seconds.
    started_delay: float = 0.1
    #: Dead-letter entries kept (oldest trimmed).
    dead_letter_max: int = 10_000
    #: Largest JSON text of one task's args and kwargs that submit accepts.
    max_argument_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES
    #: Seconds workers retry a result store refused for lack of memory, then requeue.
    store_oom_retry_period: float = 600
    #: Whether this process retries such stores (set in worker processes only).
    store_oom_retry: bool = False
    #: Asyncio pool: the loop lag (s) above which a worker takes no more messages than
    #: it runs; 0: it takes up to its prefetch limit at once, as Celery does.
    asyncio_lag_target: float = 0.05
    #: Seconds between beat's checks that its static entries still exist.
    beat_reseed_interval: float = 5
    #: Seconds beat retries each schedule-store call through a Redis outage.
    beat_redis_retry_period: float = 60
    #: Queues outside callers may name, besides the default queue and routed ones.
    known_queues: tuple[str, ...] = ()
    #: Task history: workers append lifecycle records to the ``<key_prefix>history`` stream.
    history: bool = False
    #: Largest JSON text kept of one record's args, kwargs or result (longer: truncated).
    history_max_value_bytes: int = 4096
    #: Keyword arguments whose name (case-insensitive) is one of these are stored masked.
    history_mask_keys: tuple[str, ...] = ("password", "token", "secret", "api_key", "authorization")
    #: Approximate length bound of the history stream (oldest entries trimmed).
    history_stream_maxlen: int = 1_000_000

    def __post_init__(self) -> None:
        if not isinstance(self.redis_url, str) or not self.redis_url:
            _refuse("redis_url", "a redis:// URL", self.redis_url)
        if not isinstance(self.key_prefix, str) or not self.key_prefix:
            _refuse("key_prefix", "a non-empty string", self.key_prefix)
        for name in (
            "revoke_expires",
            "legacy_unacked_timeout",
            "event_flush_interval",
            "started_delay",
            "store_oom_retry_period",
            "asyncio_lag_target",
            "beat_reseed_interval",
            "beat_redis_retry_period",
        ):
            _check_number(name, getattr(self, name), minimum=0)
        if self.unacked_heartbeat_interval is not None:
            _check_number("unacked_heartbeat_interval", self.unacked_heartbeat_interval, minimum=0.001)
        for name in (
            "async_max_connections",
            "event_buffer_limit",
            "dead_letter_max",
            "max_argument_bytes",
            "history_max_value_bytes",
            "history_stream_maxlen",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _refuse(name, "a whole number >= 1", value)
        for name in ("store_oom_retry", "history"):
            if not isinstance(getattr(self, name), bool):
                _refuse(name, "true or false", getattr(self, name))
        if self.history_max_value_bytes > 1024 * 1024:
            _refuse("history_max_value_bytes", "a whole number <= 1048576", self.history_max_value_bytes)
        masks = self.history_mask_keys
        if (
            isinstance(masks, str)
            or len(masks) > 100
            or not all(isinstance(k, str) and 0 < len(k) <= 200 for k in masks)
        ):
            _refuse("history_mask_keys", "a list of at most 100 key names of 1-200 characters", masks)
        object.__setattr__(self, "history_mask_keys", tuple(k.lower() for k in masks))
        queues = self.known_queues
        if isinstance(queues, str) or not all(isinstance(q, str) for q in queues):
            _refuse("known_queues", "a list of queue names", queues)
        object.__setattr__(self, "known_queues", tuple(queues))
        object.__setattr__(self, "worker_backend_retry_policy", dict(self.worker_backend_retry_policy))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names (``tasksys_`` + name is the configuration key)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any]) -> Options:
        """Read the ``tasksys_*`` keys of a Celery configuration (missing ones default)."""
        keys = {name: CONF_PREFIX + name for name in cls.names()}
        values = {name: conf[key] for name, key in keys.items() if conf.get(key) is not None}
        if "redis_url" not in values:
            raise InvalidRequestError("tasksys_redis_url is not configured", field="tasksys_redis_url")
        return cls(**values)

    def to_conf(self) -> dict[str, Any]:
        """The ``tasksys_*`` keys these options are written to."""
        return {CONF_PREFIX + name: getattr(self, name) for name in self.names()}

    @classmethod
    def split(cls, conf: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Separate ``tasksys_*`` keys (as field values) from Celery's own settings; an
        unknown ``tasksys_*`` key is refused, naming the accepted ones."""
        ours: dict[str, Any] = {}
        theirs: dict[str, Any] = {}
        known = set(cls.names())
        for key, value in conf.items():
            if not key.startswith(CONF_PREFIX):
                theirs[key] = value
                continue
            name = key[len(CONF_PREFIX) :]
            if name not in known:
                raise InvalidRequestError(
                    f"unknown setting {key!r}; accepted: {', '.join(CONF_PREFIX + n for n in sorted(known))}",
                    field=key,
                )
            ours[name] = value
        return ours, theirs


def _check_number(name: str, value: Any, *, minimum: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < minimum
    ):
        _refuse(name, f"a finite number >= {minimum}", value)


def _refuse(name: str, accepted: str, value: Any) -> NoReturn:
    key = CONF_PREFIX + name
    raise InvalidRequestError(f"{key} must be {accepted}; got {value!r}", field=key)


_cache: weakref.WeakKeyDictionary[Celery, Options] = weakref.WeakKeyDictionary()


def options_of(app: Celery) -> Options:
    """The typed options of ``app`` (read from its configuration once, then cached)."""
    options = _cache.get(app)
    if options is None:
        options = _cache[app] = Options.from_conf(app.conf)
    return options


def configure(app: Celery, options: Options | None = None, **changes: Any) -> Options:
    """Set ``app``'s options (all of them, or the named fields) in its configuration
    and in the cache :func:`options_of` reads; the new options."""
    if options is None:
        options = dataclasses.replace(options_of(app), **changes)
    elif changes:
        options = dataclasses.replace(options, **changes)
    app.conf.update(options.to_conf())
    _cache[app] = options
    return options
