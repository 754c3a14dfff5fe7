"""Database models of the application (SQLAlchemy 2 declarative)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Float, Index, Integer, String, Text
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pkg.celery_task import OUTBOX_TABLE

__all__ = ["Base", "QueueLengthSample", "TaskHistory", "TaskTransition"]


class Base(DeclarativeBase):
    """Declarative base; Alembic's ``target_metadata``."""


class QueueLengthSample(Base):
    """How many messages waited in a queue at a moment (written by a scheduled task)."""

    __tablename__ = "queue_length_samples"
    __table_args__ = (Index("ix_queue_length_samples_queue_sampled_at", "queue", "sampled_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    queue: Mapped[str] = mapped_column(String(200), nullable=False)
    length: Mapped[int] = mapped_column(Integer, nullable=False)
    sampled_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=lambda: datetime.now(UTC)
    )


# --- Task history (issue 11): one row per task, and its state transitions ---

#: Timestamps to the microsecond on MySQL/MariaDB too (plain DATETIME keeps seconds), so
#: the history's keyset cursor and runtimes are exact on every backend.
_MICROS = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


class TaskHistory(Base):
    """One task's lifecycle as recorded by the history recorder: the latest state, its
    arguments and outcome (truncated and masked), and when each step happened."""

    __tablename__ = "task_history"
    __table_args__ = (
        Index("ix_task_history_seen_at_task_id", "seen_at", "task_id"),
        Index("ix_task_history_task_seen_at", "task", "seen_at"),
        Index("ix_task_history_status_seen_at", "status", "seen_at"),
        Index("ix_task_history_queue_seen_at", "queue", "seen_at"),
        Index("ix_task_history_worker_seen_at", "worker", "seen_at"),
        Index("ix_task_history_finished_at", "finished_at"),
        Index("ix_task_history_parent_id", "parent_id"),
    )

    task_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    task: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    queue: Mapped[str | None] = mapped_column(String(200), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    args: Mapped[str | None] = mapped_column(Text, nullable=True)
    kwargs: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    traceback: Mapped[str | None] = mapped_column(Text, nullable=True)
    retries: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    parent_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    root_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: ``sent_at`` if known, else the first time any record of the task was seen: the
    #: key the history list is ordered and paged by.
    seen_at: Mapped[datetime] = mapped_column(_MICROS, nullable=False)
    sent_at: Mapped[datetime | None] = mapped_column(_MICROS, nullable=True)
    received_at: Mapped[datetime | None] = mapped_column(_MICROS, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(_MICROS, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(_MICROS, nullable=True)
    runtime_ms: Mapped[float | None] = mapped_column(Float, nullable=True)


class TaskTransition(Base):
    """One lifecycle record of a task (sent, received, started, retried, succeeded,
    failed, revoked); ``record_id`` is unique so a replayed record is a no-op."""

    __tablename__ = "task_transitions"
    __table_args__ = (Index("ix_task_transitions_task_id_at", "task_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    record_id: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    task_id: Mapped[str] = mapped_column(String(255), nullable=False)
    type: Mapped[str] = mapped_column(String(20), nullable=False)
    at: Mapped[datetime] = mapped_column(_MICROS, nullable=False)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


# --- Submit on commit (issue 12): the outbox table, defined in pkg.celery_task ---

OUTBOX_TABLE.to_metadata(Base.metadata)
