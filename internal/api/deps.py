"""Request-scoped access to the objects the app was built with (``app.state``), and the
annotated dependency types the routes declare. ``async`` on purpose: FastAPI runs plain
``def`` dependencies in its thread pool, a hop per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from internal.api.metrics import Metrics
from pkg.celery_task import CeleryClient

__all__ = [
    "ClientDep",
    "EngineDep",
    "MetricsDep",
    "RedisDep",
    "get_client",
    "get_engine",
    "get_metrics",
    "get_redis",
]


async def get_client(request: Request) -> CeleryClient:
    """The app's CeleryClient."""
    client: CeleryClient = request.app.state.celery_client
    return client


async def get_metrics(request: Request) -> Metrics:
    """The app's metrics."""
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_engine(request: Request) -> AsyncEngine:
    """The database engine the app's lifespan opened."""
    engine: AsyncEngine = request.app.state.db_engine
    return engine


async def get_redis(request: Request) -> Redis:
    """The Redis client the app's lifespan opened."""
    redis: Redis = request.app.state.redis
    return redis


ClientDep = Annotated[CeleryClient, Depends(get_client)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
RedisDep = Annotated[Redis, Depends(get_redis)]
