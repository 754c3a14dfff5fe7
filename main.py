"""The FastAPI application: ``uvicorn main:app``, on the settings and Celery client of
this process (``internal.config.setting``, ``internal.infra.celery``)."""

from __future__ import annotations

from internal.api.app import create_app
from internal.config.setting import setting
from internal.infra.celery import celery_client

app = create_app(setting, celery_client)
