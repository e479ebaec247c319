"""Custom classifiers: created by a training job, then used for predict."""

from __future__ import annotations

import logging
import shutil

from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy import select, update

from app.api.forms import file_fields, read_form, text_field
from app.api.responses import errors
from app.api.routes.datasets import get_owned as get_owned_dataset
from app.base_models import base_model_dir, read_card
from app.deps import CurrentKey, PredictServiceDep, SessionDep, SettingsDep, get_tenant_row
from app.schemas import (
    ClassifierCreate,
    ClassifierCreated,
    ClassifierPublic,
    Prediction,
    PredictResponse,
    PredictResult,
    as_utc,
)
from app.tables import ApiKey, BaseModel, Classifier, Job, utcnow
from worker.celery_app import TRAIN_CLASSIFIER
from worker.jobs import training_steps

router = APIRouter(
    prefix="/v1/classifiers", tags=["classifiers"], responses=errors(401, 422)
)
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


def to_public(clf: Classifier) -> ClassifierPublic:
    return ClassifierPublic.model_validate(
        {
            "id": clf.id,
            "name": clf.name,
            "status": clf.status,
            "labels": clf.labels,
            "base_model_id": clf.base_model_id,
            "dataset_id": clf.dataset_id,
            "job_id": clf.job_id,
            "params": clf.params,
            "metrics": clf.metrics,
            "created_at": as_utc(clf.created_at),
        }
    )


def get_owned(session: SessionDep, key: ApiKey, classifier_id: str) -> Classifier:
    return get_tenant_row(session, key, Classifier, classifier_id, "classifier")


def visible_base_model(session: SessionDep, key: ApiKey, base_model_id: str | None) -> BaseModel:
    if base_model_id is None:
        base = session.scalar(select(BaseModel).where(BaseModel.is_default.is_(True)))
        if base is None:
            raise HTTPException(409, "there is no default base model; give 'base_model_id'")
    else:
        base = session.get(BaseModel, base_model_id)
        if base is None or (
            base.tenant is not None and base.tenant != key.tenant and key.scope != "admin"
        ):
            raise HTTPException(404, f"base model {base_model_id} not found")
    if base.status != "ready":
        raise HTTPException(409, f"base model {base.id} is {base.status}, not ready")
    return base


@router.post(
    "", status_code=202, response_model=ClassifierCreated, responses=errors(404, 409, 413)
)
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
    from app.api.routes.jobs import send_job

    dataset = get_owned_dataset(session, key, body.dataset_id)
    base = visible_base_model(session, key, body.base_model_id)
    card = read_card(base_model_dir(settings, base.storage))
    params = body.params.resolved(card.get("adaptation") or {})
    if params["head_init"] == "meta" and card.get("meta_ways") != len(dataset.classes):
        raise HTTPException(
            422,
            f"head_init 'meta' needs exactly {card.get('meta_ways')} classes (the base model's "
            f"meta head); the dataset has {len(dataset.classes)}",
        )
    clf = Classifier(
        tenant=key.tenant,
        name=body.name,
        dataset_id=dataset.id,
        base_model_id=base.id,
        status="queued",
        params=params,
        labels=[c["name"] for c in dataset.classes],
    )
    session.add(clf)
    session.flush()
    job = Job(
        tenant=key.tenant,
        kind="training",
        status="queued",
        params=params,
        dataset_id=dataset.id,
        classifier_id=clf.id,
        base_model_id=base.id,
        total_steps=training_steps(params, [c["count"] for c in dataset.classes]),
    )
    session.add(job)
    session.flush()
    clf.job_id = job.id
    session.commit()  # the job exists before any worker can see its message
    send_job(session, settings, TRAIN_CLASSIFIER, job.id)
    return ClassifierCreated(id=clf.id, status=clf.status, job_id=job.id)


@router.get("", response_model=list[ClassifierPublic])
def list_classifiers(session: SessionDep, key: CurrentKey) -> list[ClassifierPublic]:
    """List classifiers.

    The caller's tenant's classifiers, oldest first.
    """
    rows = session.scalars(
        select(Classifier).where(Classifier.tenant == key.tenant).order_by(Classifier.created_at)
    ).all()
    return [to_public(c) for c in rows]


@router.get("/{classifier_id}", response_model=ClassifierPublic, responses=errors(404))
def read_classifier(classifier_id: str, session: SessionDep, key: CurrentKey) -> ClassifierPublic:
    """Read a classifier.

    Its status, labels, training parameters and, once trained, its holdout metrics: accuracy,
    per-class precision and recall, and the confusion matrix (rows: true class, columns:
    predicted, in `labels` order).
    """
    return to_public(get_owned(session, key, classifier_id))


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
        session.execute(
            update(Job)
            .where(Job.id == clf.job_id, Job.status == "queued")
            .values(status="cancelled", finished_at=utcnow())
        )
        session.execute(
            update(Job)
            .where(Job.id == clf.job_id, Job.status == "running")
            .values(cancel_requested=True)
        )
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
    if clf.status != "ready":
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
