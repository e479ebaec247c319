"""Versions of a classifier: retraining it on its dataset as the dataset is now makes a new
version (its own job, metrics and checkpoint); predict serves the newest ready version of the
family unless the request names one; each version is a classifier and is deleted as one."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.infra.db import get_engine
from app.infra.errors import NotFound, ServiceError
from app.infra.settings import Settings, database_url
from app.infra.tables import ClassifierRecord
from app.service import jobs
from app.service.base_models import usable_base_model
from app.service.classifiers import get_owned
from app.service.datasets import get_owned as get_owned_dataset
from app.service.jobs import ArtifactStatus
from app.service.schemas import ClassifierParams, ClassifierPublic
from app.service.security import VerifiedKey

_C = ClassifierRecord.__table__
# The family of a classifier, newest version first, in one indexed query (predict's hot path).
_FAMILY_QUERY = (
    select(_C.c.id, _C.c.status, _C.c.tenant, _C.c.version)
    .where(_C.c.family_id == select(_C.c.family_id)
           .where(_C.c.id == bindparam("classifier_id")).scalar_subquery())
    .order_by(_C.c.version.desc())
)


def serving(settings: Settings, key: VerifiedKey, classifier_id: str,
            version: int | None) -> tuple[str, int]:
    """(id, version) of the classifier that answers a predict on `classifier_id`: the newest
    ready version of its family, or the one named. 404 when the caller cannot see it or there is
    no such version; 409 when it (or, unnamed, every version) is not ready."""
    with get_engine(database_url(settings)).connect() as conn:
        rows = conn.execute(_FAMILY_QUERY, {"classifier_id": classifier_id}).all()
    asked = next((r for r in rows if r.id == classifier_id), None)
    if asked is None or asked.tenant != key.tenant:
        raise NotFound(f"classifier {classifier_id} not found")
    if version is not None:
        named = next((r for r in rows if r.version == version), None)
        if named is None:
            raise NotFound(f"classifier {classifier_id} has no version {version}; its versions: "
                           + ", ".join(str(r.version) for r in reversed(rows)))
        candidates = [named]
    else:
        candidates = list(rows)
    ready = next((r for r in candidates if r.status == ArtifactStatus.READY), None)
    if ready is None:
        status = candidates[0].status if version is not None else asked.status
        wait = ("; wait for its job (GET /v1/classifiers/{id} until 'ready', or `mtl predict "
                "--wait`)") if status in (ArtifactStatus.QUEUED, ArtifactStatus.TRAINING) else ""
        what = f"version {version} of classifier {classifier_id}" if version is not None \
            else f"classifier {classifier_id}"
        raise ServiceError(f"{what} is {status}; predict needs it trained (status 'ready')"
                           f"{wait}", 409)
    return str(ready.id), int(ready.version)


def family(session: Session, key: VerifiedKey, classifier_id: str) -> list[ClassifierRecord]:
    """Every version of the caller's classifier, oldest first."""
    clf = get_owned(session, key, classifier_id)
    return list(session.scalars(select(ClassifierRecord)
                                .where(ClassifierRecord.family_id == clf.family_id)
                                .order_by(ClassifierRecord.version)))


def list_versions(session: Session, key: VerifiedKey, classifier_id: str) -> list[ClassifierPublic]:
    return [ClassifierPublic.from_record(c) for c in family(session, key, classifier_id)]


def create_version(*, session: Session, settings: Settings, key: VerifiedKey, classifier_id: str,
                   params: ClassifierParams, callback_url: str | None) -> ClassifierRecord:
    """A new version of the caller's classifier, queued: the newest version's base model,
    dataset (as it is now) and parameters, with the request's parameters over them. 409 when the
    dataset or base model is gone, or another version was created at the same moment."""
    newest = family(session, key, classifier_id)[-1]
    try:
        dataset = get_owned_dataset(session, key, newest.dataset_id)
    except NotFound:
        raise ServiceError(f"the dataset of classifier {classifier_id} ({newest.dataset_id}) was "
                           "deleted; train a new classifier on another dataset", 409) from None
    base, card = usable_base_model(session=session, settings=settings, key=key,
                                   base_model_id=newest.base_model_id)
    merged: dict[str, Any] = {**newest.params, **params.model_dump(exclude_unset=True)}
    try:
        return jobs.create_classifier(
            session=session, settings=settings, tenant=key.tenant, name=newest.name,
            dataset=dataset, base=base, params=merged, meta_ways=card.get("meta_ways"),
            callback_url=callback_url, family=(newest.family_id, newest.version + 1),
        )
    except IntegrityError:
        session.rollback()
        raise ServiceError(f"another version of classifier {classifier_id} was created at the "
                           "same moment; list its versions and try again", 409) from None
