"""Request and response bodies of the v1 API, separate from the tables."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from models.config import AdaptConfig  # torch-free

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class Strict(BaseModel):
    # NaN and Infinity parse from JSON in Python but are no parameter's valid value.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    return value


# Text stored in the database: PostgreSQL cannot store a NUL byte in text.
Text = Annotated[str, AfterValidator(_no_nul)]


class ClassCount(BaseModel):
    name: str
    count: int


class RejectedFile(BaseModel):
    file: str
    reason: str


class DatasetPublic(BaseModel):
    id: str
    name: str
    num_images: int
    classes: list[ClassCount]
    rejected: list[RejectedFile]
    created_at: datetime


# API parameter name -> `AdaptConfig` field, for every adaptation setting: the API says
# `learning_rate` where the model code says `lr`.
ADAPT_FIELDS = {("learning_rate" if f.name == "lr" else f.name): f.name for f in fields(AdaptConfig)}
# Stored by jobs queued before these settings existed; their behaviour then, not today's default.
_LEGACY_ADAPT_PARAMS: dict[str, Any] = {"min_epochs": 0.0, "bn_stats": "frozen"}


def classifier_defaults() -> dict[str, Any]:
    """Used when neither the request nor the base model's card says otherwise: the defaults of
    `models.config.AdaptConfig`, chosen by measurement (see docs/service.md)."""
    d = AdaptConfig()
    return {api: getattr(d, name) for api, name in ADAPT_FIELDS.items()}


def adapt_config(params: dict[str, Any]) -> AdaptConfig:
    """The `AdaptConfig` of a classifier's resolved parameters (as stored with its job)."""
    values = {**_LEGACY_ADAPT_PARAMS, **{k: v for k, v in params.items() if v is not None}}
    # A setting added to the ML core after the job was stored takes its default.
    return AdaptConfig(**{name: values[api] for api, name in ADAPT_FIELDS.items() if api in values})


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

    def resolved(self, card_adaptation: dict[str, Any]) -> dict[str, Any]:
        """Every parameter filled in: request, then the base model's card, then the defaults."""
        from_card = {api: card_adaptation.get(name) for api, name in ADAPT_FIELDS.items()}
        # A field the ML core does not have (yet) is left out rather than stored as null.
        out = {k: v for k, v in self.model_dump().items() if v is not None or k in ADAPT_FIELDS}
        for name, default in classifier_defaults().items():
            if out.get(name) is None:
                out[name] = from_card[name] if from_card[name] is not None else default
        return out


class ClassifierCreate(Strict):
    name: Text = Field(min_length=1, max_length=200)
    dataset_id: Text = Field(min_length=1, max_length=64)
    base_model_id: Text | None = Field(default=None, min_length=1, max_length=64)
    params: ClassifierParams = Field(default_factory=ClassifierParams)


class ClassifierCreated(BaseModel):
    id: str
    status: str
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


class ClassifierPublic(BaseModel):
    id: str
    name: str
    status: str
    labels: list[str]
    base_model_id: str
    dataset_id: str
    job_id: str | None
    params: dict[str, Any]
    metrics: ClassifierMetrics | None
    created_at: datetime


class JobProgress(BaseModel):
    step: int
    total_steps: int
    fraction: float
    loss: float | None
    eta_seconds: float | None


JobPhase = Literal[
    "queued", "preparing", "holdout_pass", "final_pass", "pretraining", "saving"
]


class JobPublic(BaseModel):
    id: str
    kind: Literal["training", "pretraining"]
    status: JobStatus
    phase: JobPhase | None = Field(
        description="what the job is doing: queued; preparing (loading the base model and "
        "images); holdout_pass (a classifier trained on its training split, to measure holdout "
        "accuracy); final_pass (trained again from the base model on every image, so the loss "
        "starts high again); pretraining; saving. Null once the job has finished."
    )
    progress: JobProgress
    metrics: dict[str, Any] | None
    error: str | None
    classifier_id: str | None
    base_model_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int


class Prediction(BaseModel):
    label: str
    probability: float


class PredictResult(BaseModel):
    filename: str
    predictions: list[Prediction] | None = None
    error: str | None = None


class PredictResponse(BaseModel):
    results: list[PredictResult]


class BaseModelPublic(BaseModel):
    id: str
    name: str
    algorithm: str
    image_size: int
    channels: int
    is_default: bool
    status: str
    metrics: dict[str, Any]


class PretrainingJobCreate(Strict):
    name: Text = Field(min_length=1, max_length=200)
    dataset_id: Text = Field(min_length=1, max_length=64)
    algorithm: Text = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="fields of models.config.PretrainConfig; each is bounded (app/params.py) "
        "and an out-of-bounds value is a 422 naming it",
    )

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
    key: str
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


class CardAccuracy(BaseModel):
    """One measured few-shot result: accuracy on classes the base model never saw."""

    ways: int
    shots: int
    episodes: int
    accuracy: float
    ci95: float | None


class BaseModelCard(BaseModel):
    id: str
    name: str
    algorithm: str
    image_size: int
    channels: int
    is_default: bool
    status: str
    suits: str = Field(description="what kind of images this base model is meant for")
    pretrained_on: str | None = Field(description="the data it was pretrained on")
    training_seconds: float | None
    accuracy: list[CardAccuracy] = Field(
        description="few-shot accuracy measured on unseen classes (empty when not measured)"
    )
    adaptation: dict[str, Any] = Field(
        description="the fine-tuning settings its classifiers use unless a request says otherwise"
    )


class ApiKeyPublic(BaseModel):
    prefix: str
    tenant: str
    scope: str
    created_at: datetime
