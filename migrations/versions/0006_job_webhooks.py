"""jobs: callback_url and the webhook's status, next try and tries

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("callback_url", sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column("webhook_status", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("webhook_next_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("webhook_attempts", sa.JSON(), nullable=True))
        batch_op.create_index("ix_jobs_webhook_status", ["webhook_status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_webhook_status")
        batch_op.drop_column("webhook_attempts")
        batch_op.drop_column("webhook_next_at")
        batch_op.drop_column("webhook_status")
        batch_op.drop_column("callback_url")
