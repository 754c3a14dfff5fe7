"""task_outbox: tasks submitted on commit, waiting to be published (issue 12)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the outbox table (as ``pkg.celery_task.OUTBOX_TABLE`` defines it) and
    the index the relay reads it by."""
    long_text = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
    ts = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    op.create_table(
        "task_outbox",
        sa.Column("task_id", sa.String(255), primary_key=True),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("args", long_text, nullable=False),
        sa.Column("kwargs", long_text, nullable=False),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("created_at", ts, nullable=False),
    )
    op.create_index("ix_task_outbox_created_at", "task_outbox", ["created_at"])


def downgrade() -> None:
    """Drop the outbox table."""
    op.drop_index("ix_task_outbox_created_at", table_name="task_outbox")
    op.drop_table("task_outbox")
