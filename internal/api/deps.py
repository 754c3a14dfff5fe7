"""Request-scoped access to the objects the app was built with (``app.state``), and the
annotated dependency types the routes declare. ``async`` on purpose: FastAPI runs plain
``def`` dependencies in its thread pool, a hop per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from internal.api.metrics import Metrics
from pkg.celery_task import CeleryClient

__all__ = ["ClientDep", "MetricsDep", "get_client", "get_metrics"]


async def get_client(request: Request) -> CeleryClient:
    """The app's CeleryClient."""
    client: CeleryClient = request.app.state.celery_client
    return client


async def get_metrics(request: Request) -> Metrics:
    """The app's metrics."""
    metrics: Metrics = request.app.state.metrics
    return metrics


ClientDep = Annotated[CeleryClient, Depends(get_client)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
