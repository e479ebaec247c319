"""api_keys.from_env: the key registered from MTL_ADMIN_KEY, replaced when that setting changes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("from_env", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    # Keys registered from MTL_ADMIN_KEY before this column existed: those whose value was not
    # shaped like a generated key got the prefix "env-"; others cannot be told apart.
    op.execute(
        "UPDATE api_keys SET from_env = true WHERE tenant = 'admin' AND prefix LIKE 'env-%'"
    )


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("from_env")
