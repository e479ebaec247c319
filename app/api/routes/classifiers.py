"""Custom classifiers: created by a training job, then used for predict."""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select

from app.api.deps import (
    CurrentKey,
    PredictServiceDep,
    SessionDep,
    SettingsDep,
    quick_read,
    rate_limited,
)
from app.api.forms import file_fields, read_form, text_field
from app.api.idempotency import IdempotencyKey
from app.api.responses import errors
from app.infra.errors import ServiceError
from app.infra.settings import resolved
from app.infra.tables import ClassifierRecord
from app.service import base_model_choice, classifiers, jobs, versions
from app.service.base_models import usable_base_model
from app.service.datasets import get_owned as get_owned_dataset
from app.service.export import ExportFormat, export_zip
from app.service.jobs import ArtifactStatus
from app.service.pagination import DEFAULT_LIMIT, Cursor, Limit, paginate
from app.service.schemas import (
    ClassifierCreate,
    ClassifierCreated,
    ClassifierPublic,
    HoldoutPage,
    Page,
    Prediction,
    PredictRequest,
    PredictResponse,
    PredictResult,
    resolve_params,
)

router = APIRouter(prefix="/v1/classifiers", tags=["classifiers"], responses=errors(401, 422, 429))
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
                        "threshold": {"type": "number", "minimum": -1, "maximum": 1,
                                      "description": "open-set threshold (default: the "
                                                     "classifier's)"},
                    },
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
        },
    },
}


@router.post("", status_code=202, response_model=ClassifierCreated, responses=errors(404, 409, 413),
             dependencies=[rate_limited("training")])
def create_classifier(
    body: ClassifierCreate,
    request: Request,
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> ClassifierCreated:
    """Train a classifier.

    Starts a training job (202) that fine-tunes a base model on the dataset: first on a training
    split to measure holdout accuracy, then on every image. When `base_model_id` is left out,
    the job first scores every ready base model the caller may use on the dataset itself and
    trains from the best (`base_model_choice` on the classifier and job says how each scored);
    a given `base_model_id` is always obeyed. Parameters left out take the base model card's values.
    Follow the job with `GET /v1/jobs/{job_id}/events`. With an `Idempotency-Key`, a repeat
    within 24 h answers the first answer and starts nothing. With a `callback_url`, the job's
    JSON is POSTed there, signed, once it has finished (see the job's `webhook`).
    """
    dataset = get_owned_dataset(session, key, body.dataset_id)
    choice = None
    if body.base_model_id is None:
        options = base_model_choice.candidates(session, settings, key, num_classes=len(
            dataset.classes), head_init=body.params.head_init)
        choice = base_model_choice.pending([row.id for row, _ in options], body.params)
        base, card = options[0]
    else:
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
        params=resolve_params(body.params, card.get("adaptation") or {}),
        meta_ways=card.get("meta_ways"),
        callback_url=None if body.callback_url is None else str(body.callback_url),
        base_model_choice=choice,
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
async def read_classifier(
    classifier_id: str, key: CurrentKey, settings: SettingsDep
) -> ClassifierPublic:
    """Read a classifier.

    Its status, labels, training parameters and, once trained, its holdout metrics: accuracy,
    per-class precision and recall, and the confusion matrix (rows: true class, columns:
    predicted, in `labels` order).
    """
    return await quick_read(settings, classifiers.read_owned, settings, key, classifier_id)


@router.get("/{classifier_id}/holdout", response_model=HoldoutPage, responses=errors(404, 409))
def read_holdout(
    classifier_id: str,
    key: CurrentKey,
    settings: SettingsDep,
    mistakes: Annotated[bool, Query(description="only the images it got wrong")] = False,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> HoldoutPage:
    """List a classifier's holdout predictions.

    Each holdout image (kept out of training to measure the classifier) with its true label and
    what the model trained without it answered, in pages; `mistakes=true` lists only the wrong
    ones. Empty when no holdout was measured (`holdout_fraction` 0, or one image a class).
    """
    return classifiers.holdout_page(settings, key, classifier_id, mistakes=mistakes,
                                    limit=limit, cursor=cursor)


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
    classifiers.delete_classifier(session=session, settings=settings, key=key, classifier_id=classifier_id)
    predictor.evict(classifier_id)
    return Response(status_code=204)


_EXPORT_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "a zip: the model, labels.json, preprocessing.json and README.txt",
        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.get(
    "/{classifier_id}/export",
    response_class=Response,
    responses={**_EXPORT_RESPONSE, **errors(404, 409)},
    dependencies=[rate_limited("exports")],
)
def export_classifier(
    classifier_id: str,
    key: CurrentKey,
    settings: SettingsDep,
    fmt: Annotated[
        ExportFormat, Query(alias="format", description="onnx, torchscript or safetensors")
    ] = ExportFormat.ONNX,
) -> Response:
    """Export a classifier.

    A zip to run the classifier outside the service: the model as ONNX (`model.onnx`),
    TorchScript (`model.pt`) or the service's safetensors checkpoint, `labels.json`,
    `preprocessing.json` (image size, channels, resizing, normalisation mean and std) and a
    README.txt with example code. The ONNX and TorchScript models take float32 images
    (N, C, H, W) scaled to [0, 1] and answer the probabilities predict answers. Needs a
    classifier whose status is `ready`.
    """
    row = classifiers.owned_row(settings, key, classifier_id)
    if row.status != ArtifactStatus.READY:
        raise ServiceError(
            f"classifier {classifier_id} is {row.status}; export needs it trained (status 'ready')",
            409,
        )
    data = export_zip(
        settings.classifiers_dir / classifier_id, fmt, classifier_id=classifier_id, name=row.name
    )
    filename = f"classifier-{classifier_id}-{fmt.value}.zip"
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@dataclass
class _PredictInput:
    names: list[str]
    contents: list[bytes | None]  # None: not valid base64
    top_k: int
    threshold: float | None


def _form_threshold(form: Any) -> float | None:
    text = text_field(form, "threshold")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise HTTPException(422, f"threshold must be a number, got {text!r}") from None
    if not -1.0 <= value <= 1.0:
        raise HTTPException(422, "threshold must be between -1 and 1 (a cosine similarity)")
    return value


async def _form_images(request: Request, max_files: int) -> _PredictInput:
    """A multipart predict request (`files`, `top_k`, `threshold`)."""
    form = await read_form(request, max_files=max_files, setting="MTL_MAX_PREDICT_FILES")
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
    contents: list[bytes | None] = [await f.read() for f in files]
    return _PredictInput(names, contents, top_k, _form_threshold(form))


async def _json_images(request: Request, max_files: int) -> _PredictInput:
    """A JSON predict request (`PredictRequest`); an image that is not valid base64 is None,
    answered with its own error like an image that does not decode."""
    try:
        body = PredictRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    if len(body.images) > max_files:
        raise HTTPException(
            413, f"too many images; the limit is {max_files} (MTL_MAX_PREDICT_FILES)")
    names = [img.name or f"image{i + 1}" for i, img in enumerate(body.images)]
    contents: list[bytes | None] = []
    for img in body.images:
        try:
            contents.append(base64.b64decode(img.base64, validate=True))
        except (binascii.Error, ValueError):
            contents.append(None)
    return _PredictInput(names, contents, body.top_k, body.threshold)


def _answer(given: _PredictInput, ranked: list[Any]) -> PredictResponse:
    """Each image's top-k, score and "unknown" (its score below the request's threshold, else
    the classifier's), or its error."""
    results, used = [], given.threshold
    for name, r in zip(given.names, ranked, strict=True):
        if isinstance(r, str):
            results.append(PredictResult(filename=name, error=r))
            continue
        threshold = given.threshold if given.threshold is not None else r.threshold
        used = threshold if used is None else used
        results.append(PredictResult(
            filename=name, predictions=[Prediction(label=lbl, probability=p) for lbl, p in r],
            score=r.score,
            unknown=None if r.score is None or threshold is None else r.score < threshold))
    return PredictResponse(results=results, threshold=used)


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
    key: CurrentKey,
    settings: SettingsDep,
    predictor: PredictServiceDep,
    version: Annotated[int | None, Query(ge=1, le=1_000_000, description="the version to ask "
                                         "(default: the newest ready one)")] = None,
) -> PredictResponse:
    """Classify images.

    Repeated `files` and an optional `top_k` (default 5) as multipart/form-data, or a JSON
    body `{"images": [{"name": ..., "base64": ...}], "top_k": 5}` (the same limits). Each image
    gets its top-k labels with probabilities, or an `error` when it does not decode (or is not
    valid base64). Each also gets a `score` (how much it looks like the classifier's classes)
    and `unknown`: true when the score is below `threshold` (the request's, else the one the
    classifier calibrated on its holdout when it was trained). Answered by the newest ready
    version of the classifier (`classifier_id` and `version` say which), or the `version` named.
    """
    # Off the event loop, and no connection is held while predicting.
    serving_id, serving_version = await quick_read(
        settings, versions.serving, settings, key, classifier_id, version)
    if request.headers.get("content-type", "").startswith("application/json"):
        given = await _json_images(request, settings.max_predict_files)
    else:
        given = await _form_images(request, settings.max_predict_files)
    # Checking and decoding happen in the predict service's decoding threads, off the loop.
    readable = [c for c in given.contents if c is not None]
    decoded = iter(await predictor.predict(
        serving_id, resolved(settings).classifiers_dir / serving_id, readable, given.top_k
    ) if readable else [])
    ranked = [next(decoded) if c is not None else "not valid base64" for c in given.contents]
    answer = _answer(given, ranked)
    answer.classifier_id, answer.version = serving_id, serving_version
    return answer
