"""The v1 API's request and response bodies, shared by the service (which answers with them) and
this client (which reads them): one definition, so the two cannot drift apart. pydantic only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    field_validator,
    model_validator,
)

from mtl_client.base_models import (
    BaseModelCandidate,
    BaseModelCard,
    BaseModelChoice,
    BaseModelFields,
    CardAccuracy,
)
from mtl_client.jobs import CurvePoint, JobCurve, JobProgress, JobPublic, JobWebhook, WebhookAttempt
from mtl_client.statuses import FINISHED, ArtifactStatus, JobKind, JobPhase, JobStatus

__all__ = [
    "FINISHED", "ApiKeyCreate", "ApiKeyCreated", "ApiKeyPublic", "ArtifactStatus",
    "BaseModelCandidate", "BaseModelCard", "BaseModelChoice", "BaseModelPublic", "CallbackUrl",
    "CardAccuracy", "ClassCount", "ClassMetrics", "ClassifierCreate", "ClassifierCreated",
    "ClassifierMetrics", "ClassifierParams", "ClassifierPublic", "ClassifierVersionCreate", "CurvePoint",
    "DatasetImagePage", "DatasetImagePublic", "DatasetImagesAdded", "DatasetPublic", "FromRecord", "HoldoutPage",
    "HoldoutPrediction", "ImageIn", "ImageLabel", "JobCurve", "JobKind", "JobPhase", "JobProgress",
    "JobPublic", "JobStatus", "JobWebhook", "Page", "PredictRequest", "PredictResponse",
    "PredictResult", "Prediction", "PretrainingJobCreate", "PretrainingJobCreated",
    "RejectedFile", "Strict", "Text", "WebhookAttempt", "WebhookSigningSecret", "as_utc",
]

T = TypeVar("T")


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class FromRecord(BaseModel):
    """An answer the service reads from a table row by attribute name (`from_record`)."""

    model_config = ConfigDict(from_attributes=True)

    @field_validator("*", mode="after")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        return as_utc(value) if isinstance(value, datetime) else value

    @classmethod
    def from_record(cls, record: Any) -> Self:
        return cls.model_validate(record)


class Strict(BaseModel):
    # NaN and Infinity parse from JSON in Python but are no parameter's valid value.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    return value


# Text stored in the database: PostgreSQL cannot store a NUL byte in text.
Text = Annotated[str, AfterValidator(_no_nul)]

CallbackUrl = Annotated[
    HttpUrl | None,
    Field(
        default=None,
        max_length=2000,
        description="POSTed the job's JSON, signed (X-MTL-Signature: HMAC-SHA256 with the "
        "server's MTL_WEBHOOK_SECRET over '<X-MTL-Timestamp>.<body>'), once the job has "
        "finished; retried with backoff until it answers 2xx",
    ),
]


class ClassCount(BaseModel):
    name: str
    count: int


class RejectedFile(BaseModel):
    file: str
    reason: str


class DatasetPublic(FromRecord):
    id: str
    name: str
    num_images: int
    classes: list[ClassCount]
    rejected: list[RejectedFile] = Field(description="files of the first upload left out, why")
    created_at: datetime
    revision: int = Field(default=0, description="changes since the upload (0: none)")
    edits: list[dict[str, Any]] = Field(
        default_factory=list,
        description="the last 100 changes, oldest first: {revision, at, change (added, removed, "
        "relabelled), ...what changed}")

    @field_validator("edits", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


class DatasetImagesAdded(BaseModel):
    dataset: DatasetPublic = Field(description="the dataset after the addition")
    added: int
    rejected: list[RejectedFile] = Field(description="files of this upload left out, and why")


class ImageLabel(Strict):
    label: Text = Field(min_length=1, max_length=200)


class ClassifierParams(Strict):
    """How a classifier is fine-tuned. Fields left out take the base model's recommended values
    (the `adaptation` of its card, measured when it was pretrained), else classifier_defaults()."""

    steps: int | None = Field(default=None, ge=0, le=10_000)
    learning_rate: float | None = Field(default=None, ge=0.0, le=10.0)
    batch_size: int | None = Field(
        default=None, ge=0, le=4096, description="0: all training images every step"
    )
    min_epochs: float | None = Field(
        default=None, ge=0.0, le=1000.0,
        description="with batch_size below the image count: take more steps until every image "
        "was seen this many times (0: exactly `steps`)",
    )
    holdout_fraction: float = Field(default=0.2, ge=0.0, le=0.5)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    head_init: Literal["zeros", "prototype", "meta"] | None = None
    bn_stats: Literal["frozen", "support"] | None = None
    prototype_scale: float | None = Field(
        default=None, gt=0.0, le=1000.0, description="logit scale of a 'prototype' head"
    )
    stop_loss: float | None = Field(
        default=None,
        ge=0.0,
        le=100.0,
        description="steps beyond `steps` (added by min_epochs) end once a batch's loss is "
        "below this (0: never)",
    )
    augment: bool | None = Field(
        default=None, description="a random flip and shift of each image at every step"
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        # Named with the valid ones: pydantic alone says only "Extra inputs are not permitted".
        if isinstance(value, dict):
            unknown = sorted(str(k) for k in value if k not in cls.model_fields)
            if unknown:
                raise ValueError(f"unknown parameter {', '.join(map(repr, unknown))}; the "
                                 f"parameters are {', '.join(cls.model_fields)}")
        return value


class ClassifierCreate(Strict):
    name: Text = Field(min_length=1, max_length=200)
    dataset_id: Text = Field(min_length=1, max_length=64)
    base_model_id: Text | None = Field(default=None, min_length=1, max_length=64)
    params: ClassifierParams = Field(default_factory=ClassifierParams)
    callback_url: CallbackUrl = None


class ClassifierVersionCreate(Strict):
    params: ClassifierParams = Field(
        default_factory=ClassifierParams,
        description="parameters to change; the others are the newest version's")
    callback_url: CallbackUrl = None


class ClassifierCreated(BaseModel):
    id: str
    status: ArtifactStatus
    job_id: str


class ClassMetrics(BaseModel):
    label: str
    precision: float
    recall: float
    support: int


class ClassifierMetrics(BaseModel):
    holdout_accuracy: float
    per_class: list[ClassMetrics]
    confusion_matrix: list[list[int]]


class ClassifierPublic(FromRecord):
    id: str
    name: str
    status: ArtifactStatus
    labels: list[str]
    base_model_id: str
    dataset_id: str
    job_id: str | None
    params: dict[str, Any]
    metrics: ClassifierMetrics | None
    base_model_choice: BaseModelChoice | None = Field(
        default=None, description="how the service chose the base model for a request that left "
        "`base_model_id` out; null when the request named one")
    created_at: datetime
    family_id: str = Field(description="the first version's id, shared by every version")
    version: int = Field(description="1 for a new classifier, then one more per retrain")


class Prediction(BaseModel):
    label: str
    probability: float


class ImageIn(Strict):
    name: Text | None = Field(default=None, max_length=500,
                              description="echoed as the result's filename (default imageN)")
    base64: str = Field(description="the image file's bytes (PNG, JPEG, ...), base64-encoded")


class PredictRequest(Strict):
    """Predict with a JSON body: the same answer as the multipart form's."""

    images: list[ImageIn] = Field(min_length=1)
    top_k: int = Field(default=5, ge=1, le=1000)
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0,
                                    description="open-set threshold (default: the classifier's)")


class PredictResult(BaseModel):
    filename: str
    predictions: list[Prediction] | None = None
    error: str | None = None
    score: float | None = Field(
        default=None, description="how much the image looks like the classifier's classes: the "
        "cosine similarity of its features to the nearest class's mean (-1 to 1)")
    unknown: bool | None = Field(
        default=None, description="true when `score` is below the threshold: the image is likely "
        "none of the classes, whatever its top label")


class PredictResponse(BaseModel):
    classifier_id: str | None = Field(
        default=None, description="the version that answered: the newest ready one of the "
        "classifier's versions, unless the request named a `version`")
    version: int | None = None
    results: list[PredictResult]
    threshold: float | None = Field(
        default=None, description="the open-set threshold used: the request's, else the one the "
        "classifier calibrated when it was trained (null: a classifier trained without one)")


class BaseModelPublic(BaseModelFields, FromRecord):
    metrics: dict[str, Any]

    @field_validator("metrics", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class PretrainingJobCreate(Strict):
    name: Text = Field(min_length=1, max_length=200)
    dataset_id: Text = Field(min_length=1, max_length=64)
    algorithm: Text = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="fields of models.config.PretrainConfig; each is bounded (the service's PRETRAIN_BOUNDS) "
        "and an out-of-bounds value is a 422 naming it",
    )
    callback_url: CallbackUrl = None

    @field_validator("params")
    @classmethod
    def _no_algorithm_in_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "algorithm" in value:
            raise ValueError("give the algorithm as the top-level 'algorithm' field")
        return value


class PretrainingJobCreated(BaseModel):
    job_id: str
    base_model_id: str


class ApiKeyCreate(Strict):
    tenant: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.@-]+$")
    admin: bool = False


class ApiKeyCreated(BaseModel):
    key: str | None = Field(
        description="the new key, shown only here; null in the replayed answer to a repeat "
        "with the same Idempotency-Key"
    )
    prefix: str
    tenant: str
    scope: str


class DatasetImagePublic(BaseModel):
    id: int
    filename: str
    label: str


class DatasetImagePage(BaseModel):
    data: list[DatasetImagePublic]
    count: int = Field(description="images matching the query, across all pages")
    next_cursor: str | None = Field(
        default=None, description="pass as `cursor` for the next page; null on the last page"
    )


class HoldoutPrediction(BaseModel):
    """A holdout image and what the classifier measured on it (trained without it) answered."""

    image_id: int = Field(description="the dataset image (its thumbnail: GET /v1/datasets/"
                          "{dataset_id}/images/{image_id}/thumbnail)")
    filename: str
    label: str = Field(description="the image's true label")
    predicted: str
    probability: float = Field(description="of the predicted label")
    correct: bool


class HoldoutPage(BaseModel):
    data: list[HoldoutPrediction]
    count: int = Field(description="holdout images matching the query, across all pages")
    next_cursor: str | None = Field(
        default=None, description="pass as `cursor` for the next page; null on the last page"
    )


class ApiKeyPublic(FromRecord):
    prefix: str
    tenant: str
    scope: str
    created_at: datetime


class WebhookSigningSecret(BaseModel):
    tenant: str
    secret: str = Field(description="HMAC-SHA256 key of this tenant's webhook signatures")


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last page"
    )
