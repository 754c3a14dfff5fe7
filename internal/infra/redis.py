"""Async Redis client for application code (redis-py asyncio).

``open_redis()`` creates a client the caller owns (the API keeps one per app). In
worker processes ``init_redis()`` opens the process's client (in the startup hook),
``get_redis()`` hands it out, ``close_redis()`` closes it; closing twice is safe.
"""

from __future__ import annotations

import logging

from redis import RedisError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from internal.config.setting import setting

__all__ = ["close_redis", "get_redis", "init_redis", "open_redis"]

logger = logging.getLogger(__name__)

_client: Redis | None = None


async def open_redis(
    url: str, *, health_check_interval: int = 10, verify: bool = True, where: str = "the given URL"
) -> Redis:
    """A new client for ``url`` after a PING, owned by the caller (the API app keeps its
    own on ``app.state``); ``where`` names the server in logs and errors without the
    password. With ``verify=False`` a failed check is only logged: the client
    reconnects by itself once Redis is back (the API starts anyway; /readyz reports it)."""
    client = Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=10,
        # A connection that died while idle (Redis restarted) is found by a PING before
        # use, and a command that meets one is retried once, at once, on a fresh
        # connection; timeouts are not retried, so a down Redis still fails fast.
        health_check_interval=health_check_interval,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        retry_on_error=[RedisConnectionError],
    )
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
    :func:`open_redis` on ``url`` or the settings' Redis."""
    global _client
    if _client is not None:
        return _client
    _client = await open_redis(
        url or setting.redis_url,
        health_check_interval=setting.redis.health_check_interval,
        verify=verify,
        where=setting.safe_redis_url if url is None else "the given URL",
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
