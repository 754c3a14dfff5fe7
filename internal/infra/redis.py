"""Async Redis client for application code (redis-py asyncio).

``init_redis()`` opens it (in the API lifespan and in each worker process's startup
hook), ``get_redis()`` hands it out, ``close_redis()`` closes it; closing twice is safe.
"""

from __future__ import annotations

import logging

from redis import RedisError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from internal.config.setting import setting

__all__ = ["close_redis", "get_redis", "init_redis"]

logger = logging.getLogger(__name__)

_client: Redis | None = None


async def init_redis(url: str | None = None, *, verify: bool = True) -> Redis:
    """Create the client (or return the open one) and check the server answers PING.
    With ``verify=False`` a failed check is only logged: the client reconnects by itself
    once Redis is back (the API starts anyway; /readyz reports it)."""
    global _client
    if _client is not None:
        return _client
    client = Redis.from_url(
        url or setting.redis_url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=10,
        # A connection that died while idle (Redis restarted) is found by a PING before
        # use, and a command that meets one is retried once, at once, on a fresh
        # connection; timeouts are not retried, so a down Redis still fails fast.
        health_check_interval=setting.redis.health_check_interval,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        retry_on_error=[RedisConnectionError],
    )
    where = setting.safe_redis_url if url is None else "the given URL"
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
    _client = client
    return client


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
