"""Request-scoped access to the objects the app was built with. ``async`` on purpose:
FastAPI runs plain ``def`` dependencies in its thread pool, a hop per request."""

from __future__ import annotations

from fastapi import Request

from internal.api.metrics import Metrics
from pkg.celery_task import CeleryClient

__all__ = ["get_client", "get_metrics"]


async def get_client(request: Request) -> CeleryClient:
    """The app's CeleryClient."""
    client: CeleryClient = request.app.state.celery_client
    return client


async def get_metrics(request: Request) -> Metrics:
    """The app's metrics."""
    metrics: Metrics = request.app.state.metrics
    return metrics
