"""queue_length_samples: queue lengths recorded by internal.aps_tasks.record_queue_lengths

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the table and its (queue, sampled_at) index."""
    op.create_table(
        "queue_length_samples",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_queue_length_samples_queue_sampled_at", "queue_length_samples", ["queue", "sampled_at"]
    )


def downgrade() -> None:
    """Drop the table."""
    op.drop_index("ix_queue_length_samples_queue_sampled_at", table_name="queue_length_samples")
    op.drop_table("queue_length_samples")
