"""Async Redis client for application code (redis-py asyncio).

``open_redis()`` creates a client the caller owns (the API keeps one per app). In
worker processes ``init_redis()`` opens the process's client (in the startup hook),
``get_redis()`` hands it out, ``close_redis()`` closes it; closing twice is safe.
"""

from __future__ import annotations

import logging
from typing import Any

from redis import RedisError
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from internal.config.setting import setting

__all__ = ["close_redis", "get_redis", "init_redis", "open_redis"]

logger = logging.getLogger(__name__)

_client: Redis | None = None

#: Connections one client opens at most (redis-py's default).
MAX_CONNECTIONS = 100
#: Seconds a worker process's task waits for one of its client's connections when all
#: are in use (an asyncio worker runs up to thousands of tasks on that one client).
WORKER_POOL_WAIT = 30.0


async def open_redis(
    url: str,
    *,
    health_check_interval: int = 10,
    verify: bool = True,
    where: str = "the given URL",
    pool_wait: float | None = None,
) -> Redis:
    """A new client for ``url`` after a PING, owned by the caller (the API app keeps its
    own on ``app.state``); ``where`` names the server in logs and errors without the
    password. With ``verify=False`` a failed check is only logged: the client
    reconnects by itself once Redis is back (the API starts anyway; /readyz reports it).
    With ``pool_wait`` a command finding all :data:`MAX_CONNECTIONS` connections in use
    waits up to that many seconds for one, instead of failing at once."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": 2,
        "socket_timeout": 10,
        # A connection that died while idle (Redis restarted) is found by a PING before
        # use, and a command that meets one is retried once, at once, on a fresh
        # connection; timeouts are not retried, so a down Redis still fails fast.
        "health_check_interval": health_check_interval,
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        "retry_on_error": [RedisConnectionError],
        "max_connections": MAX_CONNECTIONS,
    }
    if pool_wait is None:
        client = Redis.from_url(url, **options)
    else:
        client = Redis.from_pool(BlockingConnectionPool.from_url(url, timeout=pool_wait, **options))
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        problem = (
            f"Redis at {where} is not answering ({type(exc).__name__}: {exc}); "
            "start it or set REDIS_HOST/REDIS_PORT"
        )
        if verify:
            await client.aclose()
            raise RuntimeError(problem) from exc
        logger.error("redis: %s", problem)
    else:
        logger.info("redis: connected to %s", where)
    return client


async def init_redis(url: str | None = None, *, verify: bool = True) -> Redis:
    """Open this process's client (or return the open one) for ``get_redis()``:
    :func:`open_redis` on ``url`` or the settings' Redis, its tasks waiting for a free
    connection rather than failing when all are in use."""
    global _client
    if _client is not None:
        return _client
    _client = await open_redis(
        url or setting.redis_url,
        health_check_interval=setting.redis.health_check_interval,
        verify=verify,
        where=setting.safe_redis_url if url is None else "the given URL",
        pool_wait=WORKER_POOL_WAIT,
    )
    return _client


def get_redis() -> Redis:
    """The open client; a clear error if ``init_redis()`` has not run in this process."""
    if _client is None:
        raise RuntimeError("Redis is not initialised in this process; call init_redis() first")
    return _client


async def close_redis() -> None:
    """Close the client; safe to call when it is already closed."""
    global _client
    client, _client = _client, None
    if client is not None:
        await client.aclose()
