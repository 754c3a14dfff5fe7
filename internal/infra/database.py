"""Async SQLAlchemy engine and sessions (aiosqlite by default, asyncmy for MySQL/MariaDB).

``open_engine()`` creates an engine the caller owns (the API keeps one per app).
In worker processes ``init_db()`` opens the process's engine, ``session_scope()``
gives one session per unit of work on it (commit on success, rollback on error, always
closed) and ``close_db()`` disposes of it, safe to call twice.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from kombu.utils.url import maybe_sanitize_url
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from internal.config.setting import setting

__all__ = ["close_db", "get_engine", "get_sessionmaker", "init_db", "open_engine", "session_scope"]

logger = logging.getLogger(__name__)

_engine: AsyncEngine | None = None
_sessionmaker: async_sessionmaker[AsyncSession] | None = None


async def open_engine(url: str, *, echo: bool = False, verify: bool = True) -> AsyncEngine:
    """A new engine for ``url`` after a ``SELECT 1``, owned by the caller (the API app
    keeps its own on ``app.state``). With ``verify=False`` a failed check is only
    logged; the pool reconnects later."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, pool_pre_ping=True, pool_recycle=3600, echo=echo)
    safe_url = maybe_sanitize_url(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        problem = (
            f"database at {safe_url} is not answering ({type(exc).__name__}); check "
            "DATABASE_URL or MYSQL_HOST/MYSQL_PORT/MYSQL_USER/MYSQL_DB"
        )
        if verify:
            await engine.dispose()
            raise RuntimeError(problem) from exc
        logger.error("database: %s", problem)
    else:
        logger.info("database: connected to %s", safe_url)
    return engine


async def init_db(url: str | None = None, *, verify: bool = True) -> AsyncEngine:
    """Open this process's engine (or return the open one) for ``session_scope()``:
    :func:`open_engine` on ``url`` or the settings' database."""
    global _engine, _sessionmaker
    if _engine is not None:
        return _engine
    engine = await open_engine(url or setting.database_url, echo=setting.database.echo, verify=verify)
    _engine = engine
    _sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    return engine


def get_engine() -> AsyncEngine:
    """The open engine; a clear error if ``init_db()`` has not run in this process."""
    if _engine is None:
        raise RuntimeError("the database is not initialised in this process; call init_db() first")
    return _engine


def get_sessionmaker() -> async_sessionmaker[AsyncSession]:
    """Session factory bound to the open engine."""
    if _sessionmaker is None:
        raise RuntimeError("the database is not initialised in this process; call init_db() first")
    return _sessionmaker


@asynccontextmanager
async def session_scope() -> AsyncIterator[AsyncSession]:
    """A session for one unit of work: committed on success, rolled back on error."""
    session = get_sessionmaker()()
    try:
        yield session
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    finally:
        await session.close()


async def close_db() -> None:
    """Dispose of the engine; safe to call when it is already closed."""
    global _engine, _sessionmaker
    engine, _engine, _sessionmaker = _engine, None, None
    if engine is not None:
        await engine.dispose()
