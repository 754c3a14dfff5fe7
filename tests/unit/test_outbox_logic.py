"""Submit on commit without a broker: what ``submit_on_commit`` stores in the session
(the validated request, kombu JSON so datetimes survive) and where the table lives.
Nothing is published: the client points at a port nothing listens on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
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


def test_a_long_transaction_stamps_its_row_with_the_commit_time(
    client: CeleryClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/outbox.db")
    OUTBOX_TABLE.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            quick = client.submit_on_commit(session, "t")
            session.commit()  # nothing answers on port 1: logged, the row stays
            slow = client.submit_on_commit(session, "t")
            session.flush()
            flushed_at = session.get(OutboxRow, slow).created_at  # type: ignore[union-attr]
            time.sleep(0.7)
            session.commit()
        with engine.connect() as conn:
            stamps = dict(conn.execute(select(OUTBOX_TABLE.c.task_id, OUTBOX_TABLE.c.created_at)).all())
    finally:
        engine.dispose()
    assert "left for the relay" in caplog.text
    assert set(stamps) == {quick, slow}
    # The relay's grace counts from the commit, not from submit_on_commit.
    assert stamps[slow] - flushed_at >= timedelta(seconds=0.7)
