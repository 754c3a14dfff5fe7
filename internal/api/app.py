"""Application factory: lifespan (database, Redis, Celery checks), middleware, routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from internal.api.errors import install_error_handlers
from internal.api.metrics import Metrics
from internal.api.middleware import BearerAuthMiddleware, BodySizeLimitMiddleware, MetricsMiddleware
from internal.api.routes import dead_letters, operations, periodic, tasks, workflows
from internal.config.setting import Settings, setting
from internal.infra.celery import celery_client, init_celery
from internal.infra.database import close_db, init_db
from internal.infra.redis import close_redis, init_redis
from pkg.celery_task import BrokerUnavailableError, CeleryClient

__all__ = ["API_PREFIX", "create_app"]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the database and Redis, load the task registry and check Celery. The API
    starts even when the broker is down; /readyz reports it."""
    client: CeleryClient = app.state.celery_client
    await init_db(verify=False)
    await init_redis(verify=False)
    public = client.load_tasks() and client.public_tasks()
    logger.info("api: %d public task(s): %s", len(public), ", ".join(public))
    try:
        init_celery()
    except BrokerUnavailableError as exc:
        logger.error("celery: %s; the API starts anyway and /readyz reports it", exc)
    if app.state.settings.api.token is None:
        logger.warning("api: API_TOKEN is not set; every endpoint is open (development only)")
    try:
        yield
    finally:
        await client.aclose()
        await close_redis()
        await close_db()
        logger.info("api: database and Redis closed")


def create_app(settings: Settings = setting, client: CeleryClient = celery_client) -> FastAPI:
    """Build the FastAPI application around ``client``."""
    app = FastAPI(
        title=settings.app.app_name,
        version="1.0.0",
        summary="Submit and inspect Celery tasks, workflows and periodic tasks.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.celery_client = client
    app.state.metrics = Metrics(client)
    install_error_handlers(app)
    api_routers = (tasks.router, workflows.router, periodic.router, dead_letters.router, operations.router)
    for router in api_routers:
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(operations.probes)
    app.include_router(operations.probes, prefix=API_PREFIX, include_in_schema=False)
    templates = {
        route.endpoint: prefix + route.path
        for prefix, router in [(API_PREFIX, r) for r in api_routers] + [("", operations.probes)]
        for route in router.routes
        if isinstance(route, APIRoute)
    }
    token = settings.api.token.get_secret_value() if settings.api.token else None
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.api.max_body_bytes)
    app.add_middleware(BearerAuthMiddleware, token=token)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics, routes=templates)
    return app
