"""Every Redis client the package's parts use, made in one place with one set of timeouts.

The *state* Redis holds the schedule (RedBeat), revokes, dead letters and task-id
claims; it is RedBeat's own client, so beat and the API share one pool per process. A
caller may pass its own client or connection pool instead (it must decode responses,
as RedBeat's does). The async side gets one bounded redis.asyncio pool per URL and
event loop.
"""

from __future__ import annotations

import weakref
from typing import cast
from urllib.parse import urlsplit

import redis
import redis.asyncio
from celery import Celery
from redbeat.schedulers import ensure_conf, get_redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ._compat import forget_redbeat_client, use_redbeat_client
from ._errors import InvalidRequestError
from ._options import options_of

__all__ = ["HEALTH_CHECK_INTERVAL", "RedisClients", "clients_for", "is_redis_url"]

#: Seconds a pooled connection may idle before it is PINGed ahead of its next use, so
#: one that died with a Redis restart is replaced instead of failing the next call.
HEALTH_CHECK_INTERVAL = 10


def is_redis_url(url: str | None) -> bool:
    """``redis://`` or ``rediss://``: the transports the fast paths and stores need."""
    return bool(url) and urlsplit(url).scheme in ("redis", "rediss")


class RedisClients:
    """The Redis clients of one app (see the module docstring)."""

    def __init__(self, app: Celery, client: redis.Redis | redis.ConnectionPool | None = None) -> None:
        self.app = app
        if client is not None:
            given = client if isinstance(client, redis.Redis) else redis.Redis(connection_pool=client)
            if not given.get_connection_kwargs().get("decode_responses"):
                raise InvalidRequestError(
                    "redis_client must decode responses (redis.Redis(..., decode_responses=True)), "
                    "as the schedule store reads text",
                    field="redis_client",
                )
            use_redbeat_client(app, given, ensure_conf(app).redbeat_redis_options.get("retry_period"))
            self._given: redis.Redis | None = given
        else:
            self._given = None

    def retry_state_calls(self, seconds: float) -> None:
        """Make state-Redis calls of this process retry for ``seconds`` through an
        outage (beat does; producers fail fast), keeping a caller's client if given."""
        if self._given is not None:
            use_redbeat_client(self.app, self._given, seconds)
        else:
            forget_redbeat_client(self.app)  # RedBeat rebuilds it from the options now set

    def state(self) -> redis.Redis:
        """The state Redis (the caller's client if one was given)."""
        return cast(redis.Redis, get_redis(self.app))

    def async_pool(self, url: str) -> redis.asyncio.BlockingConnectionPool:
        """A bounded pool for one event loop: a burst waits (up to 2 s) for a free
        connection instead of failing.

        Pooled connections go stale when Redis restarts (or kills clients, or a proxy
        drops idle ones): a command that meets a dead connection is retried once, at
        once, on a fresh one. Only connection errors are retried: a timeout means Redis
        is slow, and waiting twice would double the wait. (No ``health_check_interval``:
        its per-command bookkeeping cost the API about a tenth of its submit throughput,
        and the retry already covers a dead connection.)
        """
        transport = self.app.conf.broker_transport_options or {}
        return redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=options_of(self.app).async_max_connections,
            timeout=2,
            socket_connect_timeout=transport.get("socket_connect_timeout", 2),
            socket_timeout=transport.get("socket_timeout", 10),
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
            retry_on_error=[redis.exceptions.ConnectionError],
        )

    def async_client(self, url: str) -> redis.asyncio.Redis:
        """A redis.asyncio client owning a new :meth:`async_pool` (for the running loop):
        closing the client disconnects the pool's connections too."""
        return redis.asyncio.Redis.from_pool(self.async_pool(url))

    def sync_client(self, url: str, timeout: float = 2.0) -> redis.Redis:
        """A short-lived client for a one-off check (credentials, a probe) whose every
        connect and read gives up after ``timeout`` s (close it after use)."""
        return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)


_registry: weakref.WeakKeyDictionary[Celery, RedisClients] = weakref.WeakKeyDictionary()


def clients_for(app: Celery, client: redis.Redis | redis.ConnectionPool | None = None) -> RedisClients:
    """The :class:`RedisClients` of ``app``; with ``client``, make it use that client."""
    clients = _registry.get(app)
    if clients is None or client is not None:
        clients = _registry[app] = RedisClients(app, client)
    return clients
