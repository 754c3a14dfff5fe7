"""task_history and task_transitions: durable task history (issue 11)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HISTORY_INDEXES = {
    "ix_task_history_seen_at_task_id": ["seen_at", "task_id"],
    "ix_task_history_task_seen_at": ["task", "seen_at"],
    "ix_task_history_status_seen_at": ["status", "seen_at"],
    "ix_task_history_queue_seen_at": ["queue", "seen_at"],
    "ix_task_history_worker_seen_at": ["worker", "seen_at"],
    "ix_task_history_finished_at": ["finished_at"],
    "ix_task_history_parent_id": ["parent_id"],
}


def upgrade() -> None:
    """Create both tables and the indexes the history and stats queries use."""
    ts = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    op.create_table(
        "task_history",
        sa.Column("task_id", sa.String(255), primary_key=True),
        sa.Column("task", sa.String(255), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("queue", sa.String(200), nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("args", sa.Text(), nullable=True),
        sa.Column("kwargs", sa.Text(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error_type", sa.String(255), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.String(255), nullable=True),
        sa.Column("root_id", sa.String(255), nullable=True),
        sa.Column("seen_at", ts, nullable=False),
        sa.Column("sent_at", ts, nullable=True),
        sa.Column("received_at", ts, nullable=True),
        sa.Column("started_at", ts, nullable=True),
        sa.Column("finished_at", ts, nullable=True),
        sa.Column("runtime_ms", sa.Float(), nullable=True),
    )
    for name, columns in _HISTORY_INDEXES.items():
        op.create_index(name, "task_history", columns)
    op.create_table(
        "task_transitions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("record_id", sa.String(64), nullable=False, unique=True),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(20), nullable=False),
        sa.Column("at", ts, nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    op.create_index("ix_task_transitions_task_id_at", "task_transitions", ["task_id", "at"])


def downgrade() -> None:
    """Drop both tables."""
    op.drop_index("ix_task_transitions_task_id_at", table_name="task_transitions")
    op.drop_table("task_transitions")
    for name in _HISTORY_INDEXES:
        op.drop_index(name, table_name="task_history")
    op.drop_table("task_history")
