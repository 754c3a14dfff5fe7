"""Submit on commit without a broker: what ``submit_on_commit`` stores in the session
(the validated request, kombu JSON so datetimes survive) and where the table lives.
Nothing here commits, so nothing is published."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from pkg.celery_task import OUTBOX_TABLE, CeleryClient, InvalidArgumentsError
from pkg.celery_task._outbox import OutboxRow, request_of


@pytest.fixture()
def client() -> Iterator[CeleryClient]:
    """A client on a port nothing listens on: building and validating never connect."""
    client = CeleryClient(
        "outbox-unit", broker_url="redis://127.0.0.1:1/0", backend_url="redis://127.0.0.1:1/0"
    )
    try:
        yield client
    finally:
        client.close()


def test_the_row_holds_the_validated_request(client: CeleryClient) -> None:
    eta = datetime.now(UTC) + timedelta(minutes=5)
    with Session() as session:
        task_id = client.submit_on_commit(
            session,
            "reports.build",
            (42,),
            {"fmt": "pdf"},
            eta=eta,
            priority=7,
            expires=3600,
            queue="reports",
        )
        (row,) = list(session.new)
        assert isinstance(row, OutboxRow) and row.task_id == task_id and row.task_name == "reports.build"
        request = request_of(row)  # type: ignore[arg-type]  # an ORM row has the same attributes
    assert request.task_name == "reports.build" and list(request.args) == [42]
    assert dict(request.kwargs) == {"fmt": "pdf"}
    assert request.options["task_id"] == task_id
    assert request.options["eta"] == eta and request.options["priority"] == 7
    assert request.options["expires"] == 3600 and request.options["queue"] == "reports"


def test_a_caller_task_id_is_the_row_id_and_bad_input_adds_nothing(client: CeleryClient) -> None:
    with Session() as session:
        assert client.submit_on_commit(session, "t", task_id="order-7:confirm") == "order-7:confirm"
        with pytest.raises(InvalidArgumentsError):
            client.submit_on_commit(session, "t", (float("nan"),))
        assert [row.task_id for row in session.new] == ["order-7:confirm"]  # type: ignore[attr-defined]


def test_the_application_metadata_includes_the_outbox() -> None:
    from internal.models import Base

    table = Base.metadata.tables["task_outbox"]
    assert [c.name for c in table.columns] == [c.name for c in OUTBOX_TABLE.columns]
