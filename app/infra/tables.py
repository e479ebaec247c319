"""SQLAlchemy tables. The API never returns these rows directly; see `app.service.schemas`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class ApiKeyRecord(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    scope: Mapped[str] = mapped_column(String(16))  # "user" or "admin"
    # Registered from MTL_ADMIN_KEY: removed when the service starts with another value.
    from_env: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A revoked key's row stays, so that its next use is told "revoked", not "unknown".
    revoked_at: Mapped[datetime | None] = mapped_column()


class DatasetRecord(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    num_images: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[Any]] = mapped_column(default=list)  # [{"name", "count"}]
    rejected: Mapped[list[Any]] = mapped_column(default=list)  # [{"file", "reason"}]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Each change after the upload, and their count: [{"revision", "at", "change", ...}].
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    edits: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)

    images: Mapped[list[DatasetImageRecord]] = relationship(
        back_populates="dataset",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="DatasetImageRecord.id",
    )


class DatasetImageRecord(Base):
    """One labelled image of a dataset; the bytes live in the content-addressed store."""

    __tablename__ = "dataset_images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(1000))
    label: Mapped[str] = mapped_column(String(1000))

    dataset: Mapped[DatasetRecord] = relationship(back_populates="images")


class BaseModelRecord(Base):
    __tablename__ = "base_models"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    tenant: Mapped[str | None] = mapped_column(String(200))  # None: built in
    algorithm: Mapped[str] = mapped_column(String(64))
    image_size: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # training, ready, failed, cancelled
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    # "builtin/<name>" (inside the package) or a folder relative to the data directory.
    storage: Mapped[str] = mapped_column(String(500))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ClassifierRecord(Base):
    __tablename__ = "classifiers"
    __table_args__ = (UniqueConstraint("family_id", "version", name="uq_classifiers_family_version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # Plain ids, not foreign keys: a classifier outlives the dataset it was trained on.
    dataset_id: Mapped[str] = mapped_column(String(32))
    base_model_id: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # queued, training, ready, failed, cancelled
    labels: Mapped[list[Any]] = mapped_column(default=list)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # How the base model was chosen when the request named none (app.service.base_model_choice).
    base_model_choice: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Versions: every version of a classifier shares the first one's id as its family (unique
    # with the version, so two retrains at once cannot both become version n).
    family_id: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class JobRecord(Base):
    """A training or pretraining run. This row, not the broker, is the truth about its state."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # training, pretraining
    status: Mapped[str] = mapped_column(String(16), index=True)
    # A pretraining job's PretrainConfig; empty for a training job, whose parameters are its
    # classifier's (one home: what the classifier was trained with is what a retry runs).
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dataset_id: Mapped[str] = mapped_column(String(32))
    classifier_id: Mapped[str | None] = mapped_column(String(32))
    base_model_id: Mapped[str | None] = mapped_column(String(64))
    base_model_choice: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    loss: Mapped[float | None] = mapped_column(Float)
    # The loss as training went: [{"step", "loss", "phase"}], at most MAX_CURVE_POINTS (worker).
    curve: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    # What a running attempt is doing (app.service.jobs.PHASES); reset when a worker claims the job.
    phase: Mapped[str | None] = mapped_column(String(32))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    enqueued_at: Mapped[datetime | None] = mapped_column()
    # The X-Request-ID of the request that created the job: on the worker's log lines for it.
    request_id: Mapped[str | None] = mapped_column(String(128))
    # Webhook (worker/webhooks.py): where the finished job is POSTed; pending, delivered or
    # failed; when the next try is due; every try so far ({"at", "status_code", "error", ...}).
    callback_url: Mapped[str | None] = mapped_column(String(2000))
    webhook_status: Mapped[str | None] = mapped_column(String(16), index=True)
    webhook_next_at: Mapped[datetime | None] = mapped_column()
    webhook_attempts: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


class IdempotencyRecord(Base):
    """A POST sent with an `Idempotency-Key` (app.api.idempotency): what the first request was (its
    digest) and, once it succeeded, its answer, returned to repeats for a day."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("tenant", "key", name="uq_idempotency_keys_tenant_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    # Null while the first request runs.
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    content_type: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
