"""Submit on commit for SQLAlchemy: a task stored as an outbox row in the caller's
transaction, published once that transaction commits and never if it rolls back.

- :meth:`Outbox.add` validates the request as ``submit`` does, fixes its task id and adds
  an :class:`OutboxRow` to the session (a ``Session`` or an ``AsyncSession``); the row is
  written with the caller's next flush, so it commits or rolls back with their data.
- After the commit the session's ``after_commit`` event publishes the committed rows
  (inline for a ``Session``, in a thread for an ``AsyncSession`` so the loop never
  blocks). A broker outage is logged and never fails the caller's commit.
- :meth:`Outbox.relay` / :meth:`Outbox.relay_async` publish rows older than ``grace``
  seconds whose publish did not happen (process killed after the commit, broker down)
  and delete rows that are known to be sent. The row id is the task id and every send
  claims it (``_taskids``), so a row is sent once: a row whose id is already claimed
  was sent and is only deleted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

import redis
from kombu.utils import json as kombu_json
from kombu.utils.uuid import uuid
from sqlalchemy import DateTime, Index, MetaData, String, Table, Text, delete, event, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine, Row
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ._errors import BrokerUnavailableError, InvalidRequestError, TaskIdInUseError, unreachable
from ._options import options_of
from ._publish import Publisher
from ._request import TaskRequest, json_text
from ._validation import Validator

__all__ = ["OUTBOX_CLIENT_KEY", "OUTBOX_METADATA", "OUTBOX_TABLE", "Outbox", "OutboxRow", "submit_on_commit"]

logger = logging.getLogger(__name__)

#: ``session.info`` key naming the client :func:`submit_on_commit` uses when it is not
#: given one (``sessionmaker(..., info={OUTBOX_CLIENT_KEY: client})``).
OUTBOX_CLIENT_KEY = "tasksys_client"
#: The outbox table's metadata (copy the table into your own with ``to_metadata``).
OUTBOX_METADATA = MetaData()

_PENDING = "tasksys_outbox_pending"
_LISTENING = "tasksys_outbox_listening"
#: Up to 4 GiB on MySQL/MariaDB (plain TEXT stops at 64 KiB; arguments may be 16 MiB).
_LONG_TEXT = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
#: Microseconds on MySQL/MariaDB too (plain DATETIME keeps whole seconds).
_MICROS = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


class _OutboxBase(DeclarativeBase):
    metadata = OUTBOX_METADATA


class OutboxRow(_OutboxBase):
    """One task waiting to be published: its id, name, JSON arguments and send options
    (kombu's JSON, so datetimes survive), and when it was added (naive UTC)."""

    __tablename__ = "task_outbox"
    __table_args__ = (Index("ix_task_outbox_created_at", "created_at"),)

    task_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(255), nullable=False)
    args: Mapped[str] = mapped_column(_LONG_TEXT, nullable=False)
    kwargs: Mapped[str] = mapped_column(_LONG_TEXT, nullable=False)
    options: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(_MICROS, nullable=False)


#: The ``task_outbox`` table (Alembic migration ``0003`` in the application).
OUTBOX_TABLE: Table = OutboxRow.__table__  # type: ignore[assignment]


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


#: kombu's JSON decoder: it turns the ``{"__type__": "datetime", ...}`` the encoder wrote
#: for ``eta``/``expires`` back into datetimes.
_load_options = cast(Callable[[str], dict[str, Any]], kombu_json.loads)


def request_of(row: Row[Any]) -> TaskRequest:
    """The validated request a stored row holds, with its own id as ``task_id``."""
    options = {**_load_options(row.options), "task_id": row.task_id}
    return TaskRequest(row.task_name, json.loads(row.args), json.loads(row.kwargs), options=options)


@dataclass(frozen=True, slots=True)
class _Pending:
    """A row added to a session, waiting for that session's commit."""

    row: OutboxRow
    request: TaskRequest
    outbox: Outbox
    in_loop: bool
    added_at: datetime


@dataclass(slots=True)
class _Progress:
    """What one relay pass did so far: ids whose rows can go, and counts."""

    done: list[str]
    sent: int = 0
    known: int = 0


def _sync_session(session: Session | AsyncSession) -> tuple[Session, bool]:
    if isinstance(session, AsyncSession):
        return session.sync_session, True
    if isinstance(session, Session):
        return session, False
    raise InvalidRequestError(
        f"session must be a SQLAlchemy Session or AsyncSession; got {type(session).__name__}",
        field="session",
    )


def _listen(session: Session) -> None:
    """Attach the commit and rollback listeners once per session."""
    if session.info.get(_LISTENING):
        return
    event.listen(session, "before_commit", _before_commit)
    event.listen(session, "after_commit", _after_commit)
    event.listen(session, "after_transaction_end", _after_transaction_end)
    session.info[_LISTENING] = True


#: A row whose transaction commits later than this after ``submit_on_commit`` gets the
#: commit time as ``created_at`` (one UPDATE if it was flushed already), so the relay's
#: grace counts from the commit and the relay does not race the publish after it.
_RESTAMP_AFTER = timedelta(seconds=0.5)


def _before_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return
    now = _utcnow()
    for item in session.info.get(_PENDING, []):
        if now - item.added_at > _RESTAMP_AFTER:
            item.row.created_at = now


def _after_commit(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint was released: nothing is committed yet
        return
    pending: list[_Pending] = session.info.pop(_PENDING, [])
    # A row a rolled-back savepoint inserted was expunged: it has no identity.
    committed = [item for item in pending if sa_inspect(item.row).has_identity]
    by_outbox: dict[int, list[_Pending]] = {}
    for item in committed:
        by_outbox.setdefault(id(item.outbox), []).append(item)
    for items in by_outbox.values():
        outbox, requests = items[0].outbox, [item.request for item in items]
        if items[0].in_loop:
            outbox.publish_in_thread(requests)
        else:
            outbox.publish_committed(requests)


def _after_transaction_end(session: Session, transaction: Any) -> None:
    # The outermost transaction ended (committed rows were published just before, in
    # ``after_commit``): whatever is still pending was rolled back or closed unsent.
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


class Outbox:
    """Outbox rows for one client: added in a caller's transaction, published after
    its commit, relayed when that publish did not happen."""

    #: Seconds one relay batch may hold its lock (a batch is at most ``limit`` rows).
    lock_timeout = 30.0

    def __init__(self, validator: Validator, publisher: Publisher) -> None:
        self.validator = validator
        self.publisher = publisher
        self._inflight: set[Future[None]] = set()

    # -- in the caller's transaction ------------------------------------------------

    def add(self, session: Session | AsyncSession, request: TaskRequest) -> str:
        """Validate ``request`` as ``submit`` does and add its outbox row to ``session``;
        the task id (the caller's ``task_id`` or a new one). Bad input adds nothing."""
        sync_session, in_loop = _sync_session(session)
        validated = self.validator.validated(request)
        options = dict(validated.options)
        task_id = str(options.pop("task_id", None) or uuid())
        row = OutboxRow(
            task_id=task_id,
            task_name=validated.task_name,
            args=json_text(list(validated.args)),
            kwargs=json_text(dict(validated.kwargs)),
            options=json_text(options),
            created_at=_utcnow(),
        )
        stored = TaskRequest(
            validated.task_name, validated.args, validated.kwargs, options={**options, "task_id": task_id}
        )
        _listen(sync_session)
        sync_session.add(row)
        sync_session.info.setdefault(_PENDING, []).append(
            _Pending(row, stored, self, in_loop, row.created_at)
        )
        return task_id

    # -- after the commit ------------------------------------------------------------

    def send(self, request: TaskRequest) -> None:
        """Claim the request's id and publish it. :class:`TaskIdInUseError` if the id is
        known (sent before, or a caller's id already used); broker errors propagate."""
        self.publisher.claim_and_publish(request)

    def publish_committed(self, requests: Sequence[TaskRequest]) -> None:
        """Publish committed rows; never raises (the caller's commit has happened): a
        row that could not be sent stays in the outbox for the relay."""
        for index, request in enumerate(requests):
            task_id = request.options["task_id"]
            try:
                self.send(request)
            except TaskIdInUseError as exc:
                logger.info("outbox: not sent after commit, %s (the relay deletes its row)", exc)
            except BrokerUnavailableError as exc:
                logger.warning(
                    "outbox: task %s and %d more not sent after commit, left for the relay: %s",
                    task_id,
                    len(requests) - index - 1,
                    exc,
                )
                return
            except Exception:  # after the commit nothing may reach the caller
                logger.exception("outbox: task %s not sent after commit, left for the relay", task_id)

    def publish_in_thread(self, requests: Sequence[TaskRequest]) -> None:
        """:meth:`publish_committed` in the running loop's default executor, so an
        ``AsyncSession``'s commit never blocks the loop on Redis."""
        future: Future[None] = asyncio.get_running_loop().run_in_executor(  # type: ignore[assignment]
            None, self.publish_committed, list(requests)
        )
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)

    # -- the relay -------------------------------------------------------------------

    def _due(self, grace: float, limit: int) -> Any:
        if grace < 0 or isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidRequestError("grace must be >= 0 and limit at least 1", field="limit")
        table = OUTBOX_TABLE
        cutoff = _utcnow() - timedelta(seconds=grace)
        return (
            select(table.c.task_id, table.c.task_name, table.c.args, table.c.kwargs, table.c.options)
            .where(table.c.created_at <= cutoff)
            .order_by(table.c.created_at)
            .limit(limit)
        )

    @staticmethod
    def _trim(ids: Sequence[str]) -> Any:
        return delete(OUTBOX_TABLE).where(OUTBOX_TABLE.c.task_id.in_(list(ids)))

    def relay(
        self, engine: Engine, *, grace: float = 2.0, limit: int = 500, budget: float = 10.0
    ) -> dict[str, int]:
        """Relay on a sync engine: publish rows older than ``grace`` s that were not sent
        and delete the sent ones, ``limit`` rows per batch, batches until none is full
        or ``budget`` s passed; counts ``sent``, ``already_sent``, ``left``, ``skipped``."""
        query = self._due(grace, limit)
        totals = _totals()
        deadline = time.monotonic() + budget
        while True:
            with engine.connect() as conn:
                rows = list(conn.execute(query))
            progress = _Progress(done=[])
            try:
                report = self._relay_redis(rows, progress)
            finally:
                if progress.done:
                    with engine.begin() as conn:
                        conn.execute(self._trim(progress.done))
            if _add(totals, report, rows, limit) or time.monotonic() > deadline:
                return totals

    async def relay_async(
        self, engine: AsyncEngine, *, grace: float = 2.0, limit: int = 500, budget: float = 10.0
    ) -> dict[str, int]:
        """:meth:`relay` on an async engine; Redis work runs in a thread."""
        query = self._due(grace, limit)
        totals = _totals()
        deadline = time.monotonic() + budget
        while True:
            async with engine.connect() as conn:
                rows = list(await conn.execute(query))
            progress = _Progress(done=[])
            try:
                report = await asyncio.to_thread(self._relay_redis, rows, progress)
            finally:
                if progress.done:
                    async with engine.begin() as conn:
                        await conn.execute(self._trim(progress.done))
            if _add(totals, report, rows, limit) or time.monotonic() > deadline:
                return totals

    def _relay_redis(self, rows: list[Row[Any]], progress: _Progress) -> dict[str, int]:
        """Under the relay lock: which rows' ids are claimed (sent), then claim and send
        the others. ``progress`` keeps what was done if the broker fails midway."""
        if not rows:
            return _totals()
        claims = self.publisher.claims
        state = claims.redis.state()
        url = str(self.publisher.app.conf.broker_url)
        key = f"{options_of(self.publisher.app).key_prefix}outbox:relay"
        with unreachable("outbox relay: could not reach Redis", url):
            lock = state.lock(key, timeout=self.lock_timeout, blocking=False)
            if not lock.acquire():
                return {"sent": 0, "already_sent": 0, "left": len(rows), "skipped": 1}
            try:
                with state.pipeline(transaction=False) as pipe:
                    for row in rows:
                        pipe.exists(claims.key(row.task_id))
                    claimed = pipe.execute()
                for row, known in zip(rows, claimed, strict=True):
                    if known:
                        progress.known += 1
                    else:
                        try:
                            self.send(request_of(row))
                        except TaskIdInUseError:
                            progress.known += 1
                        else:
                            progress.sent += 1
                            logger.info("outbox relay: sent task %s (%s)", row.task_id, row.task_name)
                    progress.done.append(row.task_id)
            finally:
                try:
                    lock.release()
                except redis.exceptions.LockError:
                    logger.warning("outbox relay: the pass outlived its lock (%s s)", self.lock_timeout)
        return {"sent": progress.sent, "already_sent": progress.known, "left": 0, "skipped": 0}


def _totals() -> dict[str, int]:
    return {"sent": 0, "already_sent": 0, "left": 0, "skipped": 0}


def _add(totals: dict[str, int], report: dict[str, int], rows: Sequence[Any], limit: int) -> bool:
    """Add one batch's counts; True when the relay is done (the batch was not full, or
    another relay holds the lock)."""
    for name, count in report.items():
        totals[name] = max(totals[name], count) if name == "skipped" else totals[name] + count
    return len(rows) < limit or bool(report["skipped"])


class _SubmitsOnCommit(Protocol):
    def submit_on_commit(
        self,
        session: Session | AsyncSession,
        task_name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> str: ...


def submit_on_commit(
    session: Session | AsyncSession,
    task_name: str,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    client: _SubmitsOnCommit | None = None,
    **options: Any,
) -> str:
    """Store a task in ``session``'s transaction; it is published after the commit and
    never on rollback. The client is ``client``, else ``session.info[OUTBOX_CLIENT_KEY]``
    (set by the sessionmaker); returns the task id. Options are ``submit``'s."""
    chosen = client if client is not None else session.info.get(OUTBOX_CLIENT_KEY)
    if chosen is None:
        raise InvalidRequestError(
            "no client to publish with: pass client=, call client.submit_on_commit(...), or "
            f"make the session with info={{{OUTBOX_CLIENT_KEY!r}: client}}",
            field="client",
        )
    return chosen.submit_on_commit(session, task_name, args, kwargs, **options)
