"""Database models of the application (SQLAlchemy 2 declarative)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "QueueLengthSample"]


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
