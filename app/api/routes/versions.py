"""Versions of a classifier: retrain it on its dataset as it is now, list its versions."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import CurrentKey, SessionDep, SettingsDep, rate_limited
from app.api.idempotency import IdempotencyKey
from app.api.responses import errors
from app.service import versions
from app.service.jobs import ArtifactStatus
from app.service.schemas import ClassifierCreated, ClassifierPublic, ClassifierVersionCreate

router = APIRouter(prefix="/v1/classifiers", tags=["classifiers"], responses=errors(401, 422, 429))


@router.post("/{classifier_id}/versions", status_code=202, response_model=ClassifierCreated,
             responses=errors(404, 409), dependencies=[rate_limited("training")])
def create_version(
    classifier_id: str,
    body: ClassifierVersionCreate,
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> ClassifierCreated:
    """Retrain a classifier.

    Starts a job (202) that trains a new version of the classifier: its newest version's base
    model and parameters (those in `params` changed), on its dataset as the dataset is now
    (images added, removed or relabelled since are in). The new version is a classifier of its
    own (id, status, metrics); predict on any version's id answers with the newest ready one
    unless it names a `version`.
    """
    clf = versions.create_version(
        session=session, settings=settings, key=key, classifier_id=classifier_id,
        params=body.params,
        callback_url=None if body.callback_url is None else str(body.callback_url),
    )
    assert clf.job_id is not None
    return ClassifierCreated(id=clf.id, status=ArtifactStatus(clf.status), job_id=clf.job_id)


@router.get("/{classifier_id}/versions", response_model=list[ClassifierPublic],
            responses=errors(404))
def list_versions(classifier_id: str, session: SessionDep, key: CurrentKey) -> list[ClassifierPublic]:
    """List a classifier's versions.

    Every version of the classifier, oldest first, each with its status, parameters and holdout
    metrics, to compare them side by side. Delete one with `DELETE /v1/classifiers/{id}`.
    """
    return versions.list_versions(session, key, classifier_id)
