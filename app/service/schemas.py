"""The v1 API's bodies (defined once in `mtl_client.models`, which the client shares) and what
the service adds to them: filling in a classifier's parameters, and a job's answer from its row."""

from __future__ import annotations

from typing import Any

from mtl_client.models import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    BaseModelCandidate,
    BaseModelCard,
    BaseModelChoice,
    BaseModelPublic,
    CallbackUrl,
    CardAccuracy,
    ClassCount,
    ClassifierCreate,
    ClassifierCreated,
    ClassifierMetrics,
    ClassifierParams,
    ClassifierPublic,
    ClassifierVersionCreate,
    ClassMetrics,
    CurvePoint,
    DatasetImagePage,
    DatasetImagePublic,
    DatasetImagesAdded,
    DatasetPublic,
    FromRecord,
    HoldoutPage,
    HoldoutPrediction,
    ImageIn,
    ImageLabel,
    JobCurve,
    JobProgress,
    JobPublic,
    JobWebhook,
    Page,
    Prediction,
    PredictRequest,
    PredictResponse,
    PredictResult,
    PretrainingJobCreate,
    PretrainingJobCreated,
    RejectedFile,
    Strict,
    Text,
    WebhookAttempt,
    WebhookSigningSecret,
    as_utc,
)

from app.infra.tables import JobRecord
from app.service.jobs import JobStatus, phase_of
from app.service.params import ADAPT_FIELDS, classifier_defaults

__all__ = [
    "ApiKeyCreate",
    "ApiKeyCreated",
    "ApiKeyPublic",
    "BaseModelCandidate",
    "BaseModelCard",
    "BaseModelChoice",
    "BaseModelPublic",
    "CallbackUrl",
    "CardAccuracy",
    "ClassCount",
    "ClassMetrics",
    "ClassifierCreate",
    "ClassifierCreated",
    "ClassifierMetrics",
    "ClassifierParams",
    "ClassifierPublic",
    "ClassifierVersionCreate",
    "CurvePoint",
    "DatasetImagePage",
    "DatasetImagePublic",
    "DatasetImagesAdded",
    "DatasetPublic",
    "FromRecord",
    "HoldoutPage",
    "HoldoutPrediction",
    "ImageIn",
    "ImageLabel",
    "JobCurve",
    "JobProgress",
    "JobPublic",
    "JobWebhook",
    "Page",
    "PredictRequest",
    "PredictResponse",
    "PredictResult",
    "Prediction",
    "PretrainingJobCreate",
    "PretrainingJobCreated",
    "RejectedFile",
    "Strict",
    "Text",
    "WebhookAttempt",
    "WebhookSigningSecret",
    "as_utc",
    "job_public",
    "resolve_params",
]


def resolve_params(params: ClassifierParams, card_adaptation: dict[str, Any]) -> dict[str, Any]:
    """Every parameter filled in: the request, then the base model's card, then the defaults."""
    from_card = {api: card_adaptation.get(name) for api, name in ADAPT_FIELDS.items()}
    # A field the ML core does not have (yet) is left out rather than stored as null.
    out = {k: v for k, v in params.model_dump().items() if v is not None or k in ADAPT_FIELDS}
    for name, default in classifier_defaults().items():
        if out.get(name) is None:
            out[name] = from_card[name] if from_card[name] is not None else default
    return out


def job_public(job: JobRecord) -> JobPublic:
    """The job as callers see it, read from its row."""
    total = job.total_steps
    return JobPublic.model_validate(
        {
            "id": job.id,
            "kind": job.kind,
            "status": job.status,
            "phase": phase_of(job),
            "progress": {
                "step": job.step,
                "total_steps": total,
                "fraction": round(min(1.0, job.step / total), 4) if total else 0.0,
                "loss": job.loss,
                "eta_seconds": job.eta_seconds if job.status == JobStatus.RUNNING else None,
            },
            "metrics": job.metrics,
            "error": job.error,
            "classifier_id": job.classifier_id,
            "base_model_id": job.base_model_id,
            "base_model_choice": job.base_model_choice,
            "created_at": as_utc(job.created_at),
            "started_at": as_utc(job.started_at),
            "finished_at": as_utc(job.finished_at),
            "attempts": job.attempts,
            "webhook": None
            if not job.callback_url
            else {
                "url": job.callback_url,
                "status": job.webhook_status,
                "attempts": job.webhook_attempts or [],
            },
        }
    )
