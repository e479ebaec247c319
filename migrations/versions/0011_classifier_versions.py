"""classifiers: family_id and version (retraining makes a new version of a classifier)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 21:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("classifiers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("family_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
    # Every classifier so far is the first version of its own family.
    op.execute("UPDATE classifiers SET family_id = id")
    with op.batch_alter_table("classifiers", schema=None) as batch_op:
        batch_op.alter_column("family_id", existing_type=sa.String(length=32), nullable=False)
        batch_op.create_unique_constraint("uq_classifiers_family_version", ["family_id", "version"])


def downgrade() -> None:
    with op.batch_alter_table("classifiers", schema=None) as batch_op:
        batch_op.drop_constraint("uq_classifiers_family_version", type_="unique")
        batch_op.drop_column("version")
        batch_op.drop_column("family_id")
