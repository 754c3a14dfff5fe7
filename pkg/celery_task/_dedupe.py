"""Deduplicated submits: while a task sent with a ``dedupe_key`` is queued or running
(for ``dedupe_ttl`` seconds at most), another submit with that key sends nothing and
gets the existing task's id.

One Lua script on the broker Redis checks the key and, if it is free, pushes the
message (the very commands the fast path would run) and takes the key, so concurrent
submits cannot both send. Keys, all under the package's key prefix:

- ``<prefix>dedupe:<key>``: the id of the task holding ``key`` (expires after the TTL);
- ``<prefix>dedupe-task:<task id>``: the key a task holds, so a revoke can release it;
- ``<prefix>dedupe-counts``: a hash, deduplicated submits per task name (the script
  counts them, so every process reads the same figure).

The key travels in the message header :data:`DEDUPE_HEADER`; workers release it when
the task succeeds, fails for good or is revoked (``worker.dedupe``), and
``CeleryClient.revoke`` releases it at once. A release is compare-and-delete: a key
already taken by a newer task is never released.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
import redis.asyncio
from celery import Celery

from . import _compat
from ._errors import InvalidRequestError
from ._fastpath import FAST_OPTIONS, RUN_COMMANDS_LUA, Command, _request_supported, script_args
from ._limits import check_entry_name, check_seconds
from ._options import options_of
from ._redis import is_redis_url
from ._request import TaskRequest, json_text

__all__ = [
    "DEDUPE_HEADER",
    "DEFAULT_DEDUPE_TTL",
    "MAX_DEDUPE_TTL",
    "MIN_DEDUPE_TTL",
    "Dedupe",
    "Deduplicator",
    "SubmittedId",
    "check_dedupe",
    "refuse_dedupe_options",
    "release_script_args",
]

logger = logging.getLogger(__name__)

#: Message header carrying the dedupe key to the worker.
DEDUPE_HEADER = "tasksys_dedupe"
#: Seconds a key is held at most when the caller gives no ``dedupe_ttl``.
DEFAULT_DEDUPE_TTL = 3600.0
#: Bounds of ``dedupe_ttl`` in seconds: 1 s to 30 days.
MIN_DEDUPE_TTL = 1.0
MAX_DEDUPE_TTL = timedelta(days=30).total_seconds()

# KEYS: dedupe key, owner key of the new task, counts hash. ARGV: task id, TTL in ms,
# task name, dedupe key name, then per command: name, argument count, arguments.
# The commands run before the key is taken: if one fails, nothing is held.
_SUBMIT_SCRIPT = (
    """
local owner = redis.call('GET', KEYS[1])
if owner then
  redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
  return {0, owner}
end
local i = 5
"""
    + RUN_COMMANDS_LUA
    + """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[2])
return {1, ARGV[1]}
"""
)

# KEYS: owner key of the task, its dedupe key ('' = the one the owner key names).
# ARGV: task id, prefix of dedupe keys. Deletes the key only if this task holds it.
_RELEASE_SCRIPT = """
local name = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[1])
local key = KEYS[2]
if key == '' then
  if not name then return 0 end
  key = ARGV[2] .. name
end
if redis.call('GET', key) == ARGV[1] then
  redis.call('DEL', key)
  return 1
end
return 0
"""


class SubmittedId(str):
    """A task id as ``submit_async`` returns it, with ``deduplicated``: True if an
    existing task's id was returned and nothing was sent."""

    deduplicated: bool

    def __new__(cls, task_id: str, *, deduplicated: bool = False) -> SubmittedId:
        value = super().__new__(cls, task_id)
        value.deduplicated = deduplicated
        return value


@dataclass(frozen=True, slots=True)
class Dedupe:
    """A checked ``dedupe_key`` and how long it is held at most."""

    key: str
    ttl: float

    @property
    def ttl_ms(self) -> int:
        """The TTL in whole milliseconds (Redis ``PX``)."""
        return max(1, round(self.ttl * 1000))


def check_dedupe(key: Any, ttl: Any) -> Dedupe | None:
    """``None`` when no ``dedupe_key`` is given, else the checked key and TTL: the key
    follows the periodic-name rule (1-200 characters, no leading ``:``), the TTL is a
    finite number of seconds from 1 to 30 days (default 3600)."""
    if key is None:
        if ttl is not None:
            raise InvalidRequestError("dedupe_ttl needs a dedupe_key (the key it bounds)", field="dedupe_ttl")
        return None
    check_entry_name(key, field="dedupe_key")
    seconds = DEFAULT_DEDUPE_TTL
    if ttl is not None:
        seconds = check_seconds(ttl, field="dedupe_ttl", minimum=MIN_DEDUPE_TTL, maximum=MAX_DEDUPE_TTL)
    return Dedupe(key=key, ttl=seconds)


def refuse_dedupe_options(requests: Sequence[TaskRequest], where: str) -> None:
    """Refuse a request asking ``where`` (a method that does not deduplicate) to."""
    for request in requests:
        options = request.options or {}
        for name in ("dedupe_key", "dedupe_ttl"):
            if name in options:
                raise InvalidRequestError(
                    f"{where} does not deduplicate ({name} given); send such tasks with "
                    "submit(..., dedupe_key=...) or submit_async(..., dedupe_key=...)",
                    field=name,
                )


def release_script_args(prefix: str, task_id: str, key: str | None) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of the release script for ``task_id`` (``key`` if known)."""
    return [f"{prefix}dedupe-task:{task_id}", f"{prefix}dedupe:{key}" if key else ""], [
        task_id,
        f"{prefix}dedupe:",
    ]


def _add_header(payload: str, key: str) -> str:
    """The message JSON with :data:`DEDUPE_HEADER` added to its headers. kombu writes
    ``body`` (a string) and two string fields before ``headers``, and a JSON string
    cannot hold an unescaped quote, so the first ``"headers": {`` is the field itself."""
    marker = '"headers": {'
    at = payload.find(marker)
    end = at + len(marker)
    if at < 0 or payload[end : end + 1] != '"':
        raise ValueError("not a kombu task message with headers")
    return f"{payload[:end]}{json_text(DEDUPE_HEADER)}: {json_text(key)}, {payload[end:]}"


#: Clients a forked child inherited from its parent: referenced so they are never
#: finalized in the child (see :meth:`Deduplicator.client`).
_INHERITED: list[redis.Redis] = []


class Deduplicator:
    """The submit and release scripts for one app; its keys live on the broker Redis
    (the same server as the queues, so one script can check and push)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.url = str(app.conf.broker_url)
        self._submit_sha = hashlib.sha1(_SUBMIT_SCRIPT.encode(), usedforsecurity=False).hexdigest()
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._pid: int | None = None

    @property
    def available(self) -> bool:
        """The broker is Redis without a global key prefix: the only place keys can live."""
        transport = self.app.conf.broker_transport_options or {}
        return is_redis_url(self.url) and not transport.get("global_keyprefix")

    @property
    def prefix(self) -> str:
        """The package's key prefix (``tasksys:`` by default)."""
        return options_of(self.app).key_prefix

    def key(self, name: str) -> str:
        """The Redis key of one dedupe key."""
        return f"{self.prefix}dedupe:{name}"

    def owner_key(self, task_id: str) -> str:
        """The Redis key naming the dedupe key ``task_id`` holds."""
        return f"{self.prefix}dedupe-task:{task_id}"

    @property
    def counts_key(self) -> str:
        """The hash of deduplicated submits per task name."""
        return f"{self.prefix}dedupe-counts"

    def check_supported(self, request: TaskRequest, *, redis_broker: bool) -> None:
        """Refuse (nothing sent) what the script cannot publish exactly as ``send_task``
        would: another broker than Redis, eager mode, or options beyond the fast path's."""
        app = self.app
        if not redis_broker:
            raise InvalidRequestError(
                "dedupe_key needs a Redis broker (redis:// or rediss://, no global_keyprefix)",
                field="dedupe_key",
            )
        if app.conf.task_always_eager or not _compat.task_call_hook_skippable(app.backend):
            raise InvalidRequestError(
                "dedupe_key is not supported with task_always_eager or a result backend "
                "that subscribes on send",
                field="dedupe_key",
            )
        if not _request_supported(app, request):
            extra = sorted(set(request.options) - FAST_OPTIONS)
            raise InvalidRequestError(
                f"dedupe_key cannot be combined with {', '.join(extra) or 'an expiry in the past'}; "
                f"accepted with it: {', '.join(sorted(FAST_OPTIONS))}",
                field="dedupe_key",
            )

    def _script_call(
        self, task_id: str, task_name: str, dedupe: Dedupe, commands: Sequence[Command]
    ) -> tuple[list[str], list[Any]]:
        keys = [self.key(dedupe.key), self.owner_key(task_id), self.counts_key]
        marked = [
            (name, (args[0], *(_add_header(p, dedupe.key) for p in args[1:])) if name == "lpush" else args)
            for name, args in commands
        ]
        if not any(name == "lpush" for name, _ in marked):
            raise RuntimeError("a deduplicated submit built no queue push")
        return keys, [task_id, dedupe.ttl_ms, task_name, dedupe.key, *script_args(marked)]

    @staticmethod
    def _answer(answer: Sequence[Any]) -> tuple[str, bool]:
        sent, task_id = answer
        text = task_id.decode() if isinstance(task_id, bytes) else str(task_id)
        return text, int(sent) == 1

    def send(
        self, client: redis.Redis, task_id: str, task_name: str, dedupe: Dedupe, commands: Sequence[Command]
    ) -> tuple[str, bool]:
        """Run the submit script on ``client``: ``(id, True)`` if this message was sent,
        ``(id of the task holding the key, False)`` if nothing was."""
        keys, args = self._script_call(task_id, task_name, dedupe, commands)
        try:
            answer = client.evalsha(self._submit_sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            answer = client.eval(_SUBMIT_SCRIPT, len(keys), *keys, *args)
        return self._answer(answer)

    async def send_async(
        self,
        client: redis.asyncio.Redis,
        task_id: str,
        task_name: str,
        dedupe: Dedupe,
        commands: Sequence[Command],
    ) -> tuple[str, bool]:
        """:meth:`send` on redis.asyncio."""
        keys, args = self._script_call(task_id, task_name, dedupe, commands)
        try:
            answer = await client.evalsha(self._submit_sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            answer = await client.eval(_SUBMIT_SCRIPT, len(keys), *keys, *args)
        return self._answer(answer)

    def client(self) -> redis.Redis:
        """A client on the broker Redis (one per process). Its pool has no cap, so a
        burst of threads opens connections instead of failing (kombu's channel pool
        refuses the 11th); a capped blocking pool cost about 6-7% more client CPU per call."""
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                if self._client is not None:
                    # A forked child: the parent's client is kept, never finalized here
                    # (its pool's lock may have been copied held at the fork; finalizing
                    # takes it, and the child would block for good).
                    _INHERITED.append(self._client)
                transport = self.app.conf.broker_transport_options or {}
                self._client = redis.Redis.from_url(
                    self.url,
                    socket_connect_timeout=transport.get("socket_connect_timeout", 2),
                    socket_timeout=transport.get("socket_timeout", 10),
                )
                self._pid = os.getpid()
            return self._client

    def release(self, task_id: str, key: str | None = None) -> bool:
        """Free the key ``task_id`` holds (``key`` if the caller knows it, else the one
        its owner key names), unless a newer task holds it; True if one was freed."""
        if not self.available:
            return False
        keys, args = release_script_args(self.prefix, task_id, key)
        return bool(self.client().eval(_RELEASE_SCRIPT, len(keys), *keys, *args))

    def close(self) -> None:
        """Disconnect this process's client (a later call makes a new one)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
            client.connection_pool.disconnect()

    def holder(self, key: str) -> str | None:
        """The id of the task holding ``key``, if any."""
        value = self.client().get(self.key(key))
        return value.decode() if isinstance(value, bytes) else value

    def counts(self) -> dict[str, int]:
        """Deduplicated submits per task name, as every process counted them."""
        if not self.available:
            return {}
        raw: Mapping[Any, Any] = self.client().hgetall(self.counts_key)
        return {
            (name.decode(errors="replace") if isinstance(name, bytes) else str(name)): int(value)
            for name, value in raw.items()
        }
