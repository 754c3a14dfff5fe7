"""Application factory: lifespan (database, Redis, Celery checks), middleware, routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from internal.api.errors import install_error_handlers
from internal.api.metrics import Metrics
from internal.api.middleware import BearerAuthMiddleware, BodySizeLimitMiddleware, MetricsMiddleware
from internal.api.routes import dead_letters, history, limits, operations, periodic, tasks, workflows
from internal.config.setting import Settings
from internal.dashboard import mount_dashboard
from internal.dashboard.history_reader import ServiceHistory
from internal.infra.celery import check_celery
from internal.infra.database import open_engine
from internal.infra.redis import open_redis
from pkg.celery_task import BrokerUnavailableError, CeleryClient

__all__ = ["API_PREFIX", "create_app"]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def _load_public_tasks(client: CeleryClient) -> list[str]:
    client.load_tasks()
    return client.public_tasks()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the database engine and Redis client the app's settings name (kept on
    ``app.state`` for the dependencies), then load the task registry and check Celery
    with the app's client in a thread, so the event loop never waits on the network.
    The API starts even when the broker is down; /readyz reports it."""
    settings: Settings = app.state.settings
    client: CeleryClient = app.state.celery_client
    async with AsyncExitStack() as resources:  # closed in reverse: client, Redis, database
        engine = await open_engine(settings.database_url, echo=settings.database.echo, verify=False)
        resources.push_async_callback(engine.dispose)
        redis = await open_redis(
            settings.redis_url,
            health_check_interval=settings.redis.health_check_interval,
            verify=False,
            where=settings.safe_redis_url,
        )
        resources.push_async_callback(redis.aclose)
        resources.push_async_callback(client.aclose)
        app.state.db_engine, app.state.redis = engine, redis
        if getattr(app.state, "dashboard_history", None) is None:
            app.state.dashboard_history = ServiceHistory(engine)
        public = await asyncio.to_thread(_load_public_tasks, client)
        logger.info("api: %d public task(s): %s", len(public), ", ".join(public))
        try:
            await asyncio.to_thread(check_celery, client, settings)
        except BrokerUnavailableError as exc:
            logger.error("celery: %s; the API starts anyway and /readyz reports it", exc)
        if settings.api.token is None:
            logger.warning("api: API_TOKEN is not set; every endpoint is open (development only)")
        yield
    logger.info("api: database and Redis closed")


def create_app(settings: Settings, client: CeleryClient) -> FastAPI:
    """Build the FastAPI application around ``settings`` and ``client``: its lifespan
    opens the database and Redis those settings name, and the routes use that client."""
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
    api_routers = (
        tasks.router,
        workflows.router,
        periodic.router,
        dead_letters.router,
        operations.router,
        history.router,
        limits.router,
    )
    for router in api_routers:
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(operations.probes)
    app.include_router(operations.probes, prefix=API_PREFIX, include_in_schema=False)
    mount_dashboard(app)  # /dashboard: its own login (same API_TOKEN) and CSRF checks
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
