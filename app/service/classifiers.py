"""Classifiers: reading the caller's own (the hot reads as plain SQL), their holdout predictions,
and deleting one."""

from __future__ import annotations

import json
import shutil
from typing import Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from app.infra.db import get_engine
from app.infra.errors import InvalidInput, NotFound, ServiceError
from app.infra.settings import Settings, database_url
from app.infra.tables import ClassifierRecord
from app.service import jobs
from app.service.access import get_tenant_row
from app.service.jobs import ArtifactStatus
from app.service.pagination import decode_cursor, encode_cursor
from app.service.schemas import ClassifierPublic, HoldoutPage, HoldoutPrediction
from app.service.security import VerifiedKey


def get_owned(session: Session, key: VerifiedKey, classifier_id: str) -> ClassifierRecord:
    """The caller's classifier, or NotFound."""
    return get_tenant_row(session, key, ClassifierRecord, classifier_id, "classifier")


# Written beside the checkpoint by the job (worker/train_classifier.py): one row per holdout image.
HOLDOUT_FILE = "holdout.json"

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


def delete_classifier(*, session: Session, settings: Settings, key: VerifiedKey, classifier_id: str) -> None:
    """Delete the caller's classifier and its files; its job is cancelled if it has not finished."""
    clf = get_owned(session, key, classifier_id)
    if clf.job_id:
        jobs.request_cancel(session, clf.job_id)
    session.delete(clf)
    session.commit()
    shutil.rmtree(settings.classifiers_dir / classifier_id, ignore_errors=True)


def holdout_page(settings: Settings, key: VerifiedKey, classifier_id: str, *, mistakes: bool,
                 limit: int, cursor: str | None) -> HoldoutPage:
    """One page of the caller's classifier's holdout predictions, in holdout order (only the
    wrong ones with `mistakes`); the cursor is the position after the page. 409 until the
    classifier is ready; empty for one measured without a holdout (or trained before these
    were kept)."""
    row = owned_row(settings, key, classifier_id, _STATUS_QUERY)
    if row.status != ArtifactStatus.READY:
        raise ServiceError(f"classifier {classifier_id} is {row.status}; its holdout predictions "
                           "come when it is ready", 409)
    start = 0
    if cursor is not None:
        (start,) = decode_cursor(cursor, 1)
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise InvalidInput(f"cursor {cursor!r} is not a cursor from this API")
    path = settings.classifiers_dir / classifier_id / HOLDOUT_FILE
    rows = json.loads(path.read_text()) if path.exists() else []
    items = [HoldoutPrediction(**r, correct=r["label"] == r["predicted"]) for r in rows]
    if mistakes:
        items = [i for i in items if not i.correct]
    page = items[start:start + limit]
    more = start + limit < len(items)
    return HoldoutPage(data=page, count=len(items),
                       next_cursor=encode_cursor([start + limit]) if more else None)
