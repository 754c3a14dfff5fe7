"""The baseline HTTP service: bare FastAPI with a stock Celery app (``uvicorn bench.bare_api:app``).

``POST /send`` calls ``send_task`` from a sync endpoint (FastAPI runs it in its thread
pool, as most services do); ``POST /noop`` does nothing.
"""

from __future__ import annotations

import os

from celery import Celery
from fastapi import FastAPI

celery = Celery("bare", broker=os.environ["BENCH_REDIS_URL"], backend=os.environ["BENCH_REDIS_URL"])
app = FastAPI()


@app.post("/send", status_code=202)
def send() -> dict[str, str]:
    """Send ``math.number_sum(1, 2)`` the plain Celery way."""
    return {"task_id": celery.send_task("math.number_sum", (1, 2)).id}


@app.post("/noop")
async def noop() -> dict[str, str]:
    """Do nothing (the ceiling of this stack)."""
    return {}
