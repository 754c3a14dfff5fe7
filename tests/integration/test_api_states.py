"""One status mapping for single and batch reads: a stored state reads the same through
``GET /tasks/{id}`` and ``POST /tasks/status`` (real uvicorn, real Redis)."""

from __future__ import annotations

from typing import Any

import pytest

from pkg.celery_task import CeleryClient
from tests.conftest import Api

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("stored", "result", "shown", "error", "shown_result"),
    [
        ("REJECTED", None, "FAILURE", None, None),
        (
            "REJECTED",
            {"exc_type": "Reject", "exc_message": "poison"},
            "FAILURE",
            {"type": "Reject", "message": "poison"},
            None,
        ),
        ("RECEIVED", None, "PENDING", None, None),
        ("SUCCESS", 3, "SUCCESS", None, 3),
    ],
)
def test_single_and_batch_reads_agree(
    api: Api,
    client: CeleryClient,
    unique: str,
    stored: str,
    result: Any,
    shown: str,
    error: Any,
    shown_result: Any,
) -> None:
    task_id = f"state-{stored.lower()}-{unique}"
    client.app.backend.store_result(task_id, result, stored)  # the session database the API reads

    single = api.http.get(f"/api/v1/tasks/{task_id}")
    batch = api.http.post("/api/v1/tasks/status", json={"task_ids": [task_id]})

    assert single.status_code == 200, single.text
    assert batch.status_code == 200, batch.text
    assert single.json()["status"] == shown
    assert batch.json() == {"statuses": {task_id: shown}}
    assert single.json()["error"] == error
    assert single.json()["result"] == shown_result
