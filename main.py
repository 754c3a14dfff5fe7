"""The FastAPI application: ``uvicorn main:app``."""

from __future__ import annotations

from internal.api.app import create_app

app = create_app()
