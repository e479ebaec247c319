"""jobs: a training job's parameters live on its classifier only

Until now a classifier's parameters were written twice, on the classifier and on its training
job, always together. The job's copy is emptied; a classifier whose own copy is empty (none
should be) takes its job's first, so nothing is lost. Pretraining jobs keep theirs.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 23:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("kind", sa.String),
                 sa.column("classifier_id", sa.String), sa.column("params", sa.JSON))
_classifiers = sa.table("classifiers", sa.column("id", sa.String), sa.column("params", sa.JSON))


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(_jobs.c.id, _jobs.c.params, _classifiers.c.id, _classifiers.c.params)
                        .join(_classifiers, _classifiers.c.id == _jobs.c.classifier_id)
                        .where(_jobs.c.kind == "training")).all()
    for job_id, job_params, clf_id, clf_params in rows:
        if not clf_params and job_params:
            conn.execute(sa.update(_classifiers).where(_classifiers.c.id == clf_id)
                         .values(params=job_params))
        conn.execute(sa.update(_jobs).where(_jobs.c.id == job_id).values(params={}))


def downgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(_jobs.c.id, _classifiers.c.params)
                        .join(_classifiers, _classifiers.c.id == _jobs.c.classifier_id)
                        .where(_jobs.c.kind == "training")).all()
    for job_id, clf_params in rows:
        conn.execute(sa.update(_jobs).where(_jobs.c.id == job_id).values(params=clf_params))
