"""Classifiers: reading the caller's own (the hot reads as plain SQL) and deleting one."""

from __future__ import annotations

import shutil
from typing import Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from app.infra.db import get_engine
from app.infra.errors import NotFound
from app.infra.settings import Settings, database_url
from app.infra.tables import ClassifierRecord
from app.service import jobs
from app.service.access import get_tenant_row
from app.service.schemas import ClassifierPublic
from app.service.security import VerifiedKey


def get_owned(session: Session, key: VerifiedKey, classifier_id: str) -> ClassifierRecord:
    """The caller's classifier, or NotFound."""
    return get_tenant_row(session, key, ClassifierRecord, classifier_id, "classifier")


_CLASSIFIER = ClassifierRecord.__table__
# Built once: building and cache-keying a statement per request was a tenth of a GET's CPU.
_ROW_QUERY = select(_CLASSIFIER).where(_CLASSIFIER.c.id == bindparam("classifier_id"))
_STATUS_QUERY = select(_CLASSIFIER.c.status, _CLASSIFIER.c.tenant).where(
    _CLASSIFIER.c.id == bindparam("classifier_id")
)


def owned_row(
    settings: Settings, key: VerifiedKey, classifier_id: str, query: Select[Any] = _ROW_QUERY
) -> Any:
    """The caller's classifier's row (every column, or those `query` selects with the tenant),
    or 404 as `get_tenant_row` answers another tenant's. A plain SQL query on a connection of its
    own: for the two routes a client calls most (read, predict), the ORM session's identity map
    and events cost half a request's CPU (issue 13)."""
    with get_engine(database_url(settings)).connect() as conn:
        row = conn.execute(query, {"classifier_id": classifier_id}).first()
    if row is None or row.tenant != key.tenant:
        raise NotFound(f"classifier {classifier_id} not found")
    return row


def read_owned(settings: Settings, key: VerifiedKey, classifier_id: str) -> ClassifierPublic:
    """The caller's classifier as the API shows it (the row has every column of a record)."""
    return ClassifierPublic.from_record(owned_row(settings, key, classifier_id))


def owned_status(settings: Settings, key: VerifiedKey, classifier_id: str) -> str:
    """The status of the caller's classifier (404 if it is not the caller's)."""
    return str(owned_row(settings, key, classifier_id, _STATUS_QUERY).status)


def delete_classifier(*, session: Session, settings: Settings, key: VerifiedKey, classifier_id: str) -> None:
    """Delete the caller's classifier and its files; its job is cancelled if it has not finished."""
    clf = get_owned(session, key, classifier_id)
    if clf.job_id:
        jobs.request_cancel(session, clf.job_id)
    session.delete(clf)
    session.commit()
    shutil.rmtree(settings.classifiers_dir / classifier_id, ignore_errors=True)
