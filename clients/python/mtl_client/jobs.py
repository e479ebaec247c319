"""What the API says about a job: its progress, outcome, webhook deliveries and loss curve.
pydantic only."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from mtl_client.base_models import BaseModelChoice
from mtl_client.statuses import JobKind, JobPhase, JobStatus


class JobProgress(BaseModel):
    step: int
    total_steps: int
    fraction: float
    loss: float | None
    eta_seconds: float | None


class WebhookAttempt(BaseModel):
    at: datetime
    status_code: int | None = Field(description="the receiver's HTTP status; null: no answer")
    error: str | None = None
    duration_ms: float


class JobWebhook(BaseModel):
    url: str
    status: Literal["pending", "delivered", "failed"] = Field(
        description="pending until the job has finished and a try succeeded (2xx); failed "
        "after MTL_WEBHOOK_MAX_ATTEMPTS tries"
    )
    attempts: list[WebhookAttempt]


class JobPublic(BaseModel):
    id: str
    kind: JobKind
    status: JobStatus
    phase: JobPhase | None = Field(
        description="what the job is doing: queued; preparing (loading the base model and "
        "images); choosing_base_model (scoring the candidates, when the request named none); "
        "holdout_pass (a classifier trained on its training split, to measure holdout "
        "accuracy); final_pass (trained again from the base model on every image, so the loss "
        "starts high again); pretraining; saving. Null once the job has finished."
    )
    progress: JobProgress
    metrics: dict[str, Any] | None
    error: str | None
    classifier_id: str | None
    base_model_id: str | None
    base_model_choice: BaseModelChoice | None = Field(
        default=None, description="how the service chose the base model for a request that left "
        "`base_model_id` out; null when the request named one")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    webhook: JobWebhook | None = Field(
        default=None, description="the callback_url's deliveries; null without one"
    )


class CurvePoint(BaseModel):
    step: int
    loss: float
    phase: JobPhase | None = Field(description="the phase the step was in (a classifier's "
                                   "holdout_pass or final_pass)")


class JobCurve(BaseModel):
    job_id: str
    total_steps: int
    points: list[CurvePoint] = Field(
        description="the loss at evenly spaced steps (at most 400 points: a long job's spacing "
        "doubles as it goes), kept after the job")
