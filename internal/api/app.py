"""Application factory: lifespan (database, Redis, Celery checks) and routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from internal.config.setting import setting
from internal.infra.celery import celery_client, init_celery
from internal.infra.database import close_db, init_db
from internal.infra.redis import close_redis, init_redis
from pkg.celery_task import BrokerUnavailableError

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the database and Redis, load the task registry and check Celery; the API
    still starts when the broker is down (readiness then reports it)."""
    await init_db()
    await init_redis()
    celery_client.load_tasks()
    try:
        init_celery()
    except BrokerUnavailableError as exc:
        logger.error("celery: %s; the API starts anyway and /readyz reports it", exc)
    try:
        yield
    finally:
        await close_redis()
        await close_db()
        celery_client.close()


def create_app() -> FastAPI:
    """Build the FastAPI application."""
    app = FastAPI(title=setting.app.app_name, version="1.0.0", lifespan=lifespan)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up (no dependency checks; see /readyz)."""
        return {"status": "ok"}

    return app
