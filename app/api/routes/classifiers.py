"""Custom classifiers: created by a training job, then used for predict."""

from __future__ import annotations

import logging
import shutil

from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy import select

from app import jobs
from app.api.forms import file_fields, read_form, text_field
from app.api.responses import errors
from app.api.routes.datasets import get_owned as get_owned_dataset
from app.base_models import usable_base_model
from app.deps import CurrentKey, PredictServiceDep, SessionDep, SettingsDep, get_tenant_row
from app.jobs import ArtifactStatus
from app.pagination import DEFAULT_LIMIT, Cursor, Limit, Page, paginate
from app.schemas import (
    ClassifierCreate,
    ClassifierCreated,
    ClassifierPublic,
    Prediction,
    PredictResponse,
    PredictResult,
)
from app.tables import ApiKeyRecord, ClassifierRecord

router = APIRouter(prefix="/v1/classifiers", tags=["classifiers"], responses=errors(401, 422))
log = logging.getLogger(__name__)

_PREDICT_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "top_k": {"type": "integer", "default": 5, "minimum": 1},
                    },
                }
            }
        },
    },
}


def get_owned(session: SessionDep, key: ApiKeyRecord, classifier_id: str) -> ClassifierRecord:
    return get_tenant_row(session, key, ClassifierRecord, classifier_id, "classifier")


@router.post("", status_code=202, response_model=ClassifierCreated, responses=errors(404, 409, 413))
def create_classifier(
    body: ClassifierCreate,
    request: Request,
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
) -> ClassifierCreated:
    """Train a classifier.

    Starts a training job (202) that fine-tunes the base model (the default one when
    `base_model_id` is left out) on the dataset: first on a training split to measure holdout
    accuracy, then on every image. Parameters left out take the base model card's values.
    Follow the job with `GET /v1/jobs/{job_id}/events`.
    """
    dataset = get_owned_dataset(session, key, body.dataset_id)
    base, card = usable_base_model(
        session=session, settings=settings, key=key, base_model_id=body.base_model_id
    )
    clf = jobs.create_classifier(
        session=session,
        settings=settings,
        tenant=key.tenant,
        name=body.name,
        dataset=dataset,
        base=base,
        params=body.params.resolved(card.get("adaptation") or {}),
        meta_ways=card.get("meta_ways"),
    )
    assert clf.job_id is not None
    return ClassifierCreated(id=clf.id, status=ArtifactStatus(clf.status), job_id=clf.job_id)


@router.get("", response_model=Page[ClassifierPublic])
def list_classifiers(
    session: SessionDep, key: CurrentKey, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
) -> Page[ClassifierPublic]:
    """List classifiers.

    The caller's tenant's classifiers, oldest first, one page at a time.
    """
    rows, next_cursor = paginate(
        session,
        select(ClassifierRecord).where(ClassifierRecord.tenant == key.tenant),
        created_at=ClassifierRecord.created_at,
        id=ClassifierRecord.id,
        limit=limit,
        cursor=cursor,
    )
    return Page(data=[ClassifierPublic.from_record(c) for c in rows], next_cursor=next_cursor)


@router.get("/{classifier_id}", response_model=ClassifierPublic, responses=errors(404))
def read_classifier(classifier_id: str, session: SessionDep, key: CurrentKey) -> ClassifierPublic:
    """Read a classifier.

    Its status, labels, training parameters and, once trained, its holdout metrics: accuracy,
    per-class precision and recall, and the confusion matrix (rows: true class, columns:
    predicted, in `labels` order).
    """
    return ClassifierPublic.from_record(get_owned(session, key, classifier_id))


@router.delete("/{classifier_id}", status_code=204, responses=errors(404))
def delete_classifier(
    classifier_id: str,
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
    predictor: PredictServiceDep,
) -> Response:
    """Delete a classifier.

    Its job is cancelled if it has not finished.
    """
    clf = get_owned(session, key, classifier_id)
    if clf.job_id:
        jobs.request_cancel(session, clf.job_id)
    session.delete(clf)
    session.commit()
    predictor.evict(classifier_id)
    shutil.rmtree(settings.classifiers_dir / classifier_id, ignore_errors=True)
    return Response(status_code=204)


@router.post(
    "/{classifier_id}/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    openapi_extra=_PREDICT_DOC,
    responses=errors(404, 409, 413, 415),
)
async def predict(
    classifier_id: str,
    request: Request,
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
    predictor: PredictServiceDep,
) -> PredictResponse:
    """Classify images.

    Repeated `files` and an optional `top_k` (default 5). Each file gets its top-k labels
    with probabilities, or an `error` when it does not decode. Needs a classifier whose status
    is `ready`.
    """
    clf = get_owned(session, key, classifier_id)
    if clf.status != ArtifactStatus.READY:
        raise HTTPException(
            409,
            f"classifier {classifier_id} is {clf.status}; predict needs it "
            "trained (status 'ready')",
        )
    session.close()  # do not hold a connection while predicting
    form = await read_form(
        request, max_files=settings.max_predict_files, setting="MTL_MAX_PREDICT_FILES"
    )
    top_k_text = text_field(form, "top_k")
    try:
        top_k = 5 if top_k_text is None else int(top_k_text)
    except ValueError:
        raise HTTPException(422, f"top_k must be an integer, got {top_k_text!r}") from None
    if top_k < 1:
        raise HTTPException(422, "top_k must be at least 1")
    files = file_fields(form, "files")
    if not files:
        raise HTTPException(422, "send at least one image as 'files'")
    names = [f.filename or f"file{i + 1}" for i, f in enumerate(files)]
    contents = [await f.read() for f in files]
    # Checking and decoding happen in the predict service's decoding threads, off the loop.
    ranked = await predictor.predict(clf.id, settings.classifiers_dir / clf.id, contents, top_k)
    return PredictResponse(
        results=[
            PredictResult(filename=name, error=r)
            if isinstance(r, str)
            else PredictResult(
                filename=name, predictions=[Prediction(label=lbl, probability=p) for lbl, p in r]
            )
            for name, r in zip(names, ranked, strict=True)
        ]
    )
