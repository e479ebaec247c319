"""Jobs, in one place: their statuses, creating a classifier's training job or a base model's
pretraining job, sending a job to the broker by task name, cancelling, and the one status
transition of the classifier or base model a job makes.

The routes call these functions and stay thin; the worker (`worker/`) claims, runs and reports
jobs and calls `set_artifact_status` and `send` too. The job row, not the broker, is the truth
about a job's state: a job is sent only after its row has committed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from mtl_client.models import FINISHED, ArtifactStatus, JobKind, JobPhase, JobStatus
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.infra import metrics, outbound
from app.infra.broker import TASK_OF_KIND, enqueue
from app.infra.db import session_scope
from app.infra.errors import InvalidInput, NotFound, ServiceError
from app.infra.logs import request_id_var
from app.infra.settings import Settings
from app.infra.tables import (
    BaseModelRecord,
    ClassifierRecord,
    DatasetRecord,
    JobRecord,
    new_id,
    utcnow,
)
from app.service.holdout import training_steps
from app.service.security import VerifiedKey
from models.config import check_head_init

if TYPE_CHECKING:
    from models.config import PretrainConfig

log = logging.getLogger(__name__)


# The phases a worker writes to `JobRecord.phase` while it runs a job.
RUNNING_PHASES = tuple(p for p in JobPhase if p is not JobPhase.QUEUED)


def phase_of(job: JobRecord) -> JobPhase | None:
    """The phase shown to callers: queued, the running attempt's phase, or None once finished."""
    if job.status == JobStatus.QUEUED:
        return JobPhase.QUEUED
    if job.status == JobStatus.RUNNING:
        return JobPhase(job.phase) if job.phase else JobPhase.PREPARING
    return None


def set_artifact_status(
    session: Session, job_id: str, status: ArtifactStatus, **values: Any
) -> None:
    """The one status change of what a job makes: its classifier (training) or its base model
    (pretraining) becomes `status`, with `values` written alongside (labels, metrics)."""
    job = session.get(JobRecord, job_id)
    if job is None:
        return
    if job.kind == JobKind.TRAINING and job.classifier_id:
        session.execute(
            update(ClassifierRecord)
            .where(ClassifierRecord.id == job.classifier_id)
            .values(status=status, **values)
        )
    elif job.kind == JobKind.PRETRAINING and job.base_model_id:
        session.execute(
            update(BaseModelRecord)
            .where(BaseModelRecord.id == job.base_model_id)
            .values(status=status, **values)
        )


def create_classifier(
    *,
    session: Session,
    settings: Settings,
    tenant: str,
    name: str,
    dataset: DatasetRecord,
    base: BaseModelRecord,
    params: dict[str, Any],
    meta_ways: int | None,
    callback_url: str | None = None,
    base_model_choice: dict[str, Any] | None = None,
    family: tuple[str, int] | None = None,
) -> ClassifierRecord:
    """A queued classifier and its training job, committed, then sent. `params` are resolved
    (request, then the base model's card, then the defaults); `meta_ways` is the width of the
    base model's meta head, if it has one. With a pending `base_model_choice`
    (app.service.base_model_choice), `base` is its first candidate until the job has chosen.
    `family`: (family id, version) of a new version of a classifier; else a classifier of its
    own (version 1, its own id as the family). The parameters are stored on the classifier
    only; its job reads them there."""
    check_head_init(params["head_init"], len(dataset.classes), meta_ways)
    webhook = _webhook(settings, callback_url)
    clf = ClassifierRecord(
        tenant=tenant,
        name=name,
        dataset_id=dataset.id,
        base_model_id=base.id,
        status=ArtifactStatus.QUEUED,
        params=params,
        labels=[c["name"] for c in dataset.classes],
        base_model_choice=base_model_choice,
    )
    clf.id = new_id()
    clf.family_id, clf.version = family or (clf.id, 1)
    session.add(clf)
    session.flush()
    job = JobRecord(
        tenant=tenant,
        kind=JobKind.TRAINING,
        status=JobStatus.QUEUED,
        dataset_id=dataset.id,
        classifier_id=clf.id,
        base_model_id=base.id,
        base_model_choice=base_model_choice,
        total_steps=training_steps(params, [c["count"] for c in dataset.classes]),
        request_id=request_id_var.get(),
        **webhook,
    )
    session.add(job)
    session.flush()
    clf.job_id = job.id
    session.commit()  # the job exists before any worker can see its message
    _created(job)
    send(settings, job.id, JobKind.TRAINING)
    return clf


def create_pretraining_job(
    *,
    session: Session,
    settings: Settings,
    tenant: str,
    name: str,
    dataset: DatasetRecord,
    config: PretrainConfig,
    callback_url: str | None = None,
) -> JobRecord:
    """A base model being trained and its queued pretraining job, committed, then sent.
    `config` is already bounded (`app.service.params.pretrain_config`)."""
    webhook = _webhook(settings, callback_url)
    base_id = new_id()
    session.add(
        BaseModelRecord(
            id=base_id,
            name=name,
            tenant=tenant,
            algorithm=config.algorithm,
            image_size=config.image_size,
            channels=config.channels,
            status=ArtifactStatus.TRAINING,
            storage=f"base_models/{base_id}",
        )
    )
    job = JobRecord(
        tenant=tenant,
        kind=JobKind.PRETRAINING,
        status=JobStatus.QUEUED,
        params=asdict(config),
        dataset_id=dataset.id,
        base_model_id=base_id,
        total_steps=config.iterations,
        request_id=request_id_var.get(),
        **webhook,
    )
    session.add(job)
    session.commit()
    _created(job)
    send(settings, job.id, JobKind.PRETRAINING)
    return job


def _webhook(settings: Settings, callback_url: str | None) -> dict[str, Any]:
    """A job's webhook columns: pending until the job has finished and the worker delivered it
    (worker/webhooks.py). A callback needs the secret that signs it."""
    if callback_url is None:
        return {}
    if not settings.webhook_secret:
        raise InvalidInput(
            "callback_url needs a webhook secret on the server (MTL_WEBHOOK_SECRET) to sign "
            "its deliveries; ask the operator to set it"
        )
    try:  # decided now where it can be; a host that does not resolve yet is decided at delivery
        outbound.resolve(callback_url, allow_private=settings.webhook_allow_private)
    except outbound.Unresolvable:
        pass
    except outbound.RefusedTarget as exc:
        raise InvalidInput(f"callback_url: {exc}") from None
    return {"callback_url": callback_url, "webhook_status": "pending", "webhook_attempts": []}


def _created(job: JobRecord) -> None:
    metrics.count_job_created(job.kind)
    log.info(
        "job %s created (%s)",
        job.id,
        job.kind,
        extra={"event": "job.created", "job_id": job.id, "kind": job.kind, "tenant": job.tenant},
    )


def send(settings: Settings, job_id: str, kind: str) -> bool:
    """Send a committed, queued job to its queue by task name and record when. False (logged)
    when the broker is down: the job stays queued without `enqueued_at`, and a worker's recovery
    loop sends it later."""
    try:
        enqueue(settings, TASK_OF_KIND[kind], job_id)
    except Exception:
        log.exception("could not send job %s; a worker's recovery loop sends it later", job_id)
        return False
    with session_scope(settings.resolved_database_url) as session:
        session.execute(
            update(JobRecord)
            .where(JobRecord.id == job_id, JobRecord.status == JobStatus.QUEUED)
            .values(enqueued_at=utcnow())
        )
    return True


def cancel(session: Session, job: JobRecord) -> None:
    """Cancel a job and commit: a queued one at once (its classifier or base model too), a
    running one at its worker's next step. 409 when it has already finished."""
    if job.status in FINISHED:
        raise ServiceError(f"job {job.id} already {job.status}", 409)
    request_cancel(session, job.id)
    session.commit()


def request_cancel(session: Session, job_id: str) -> None:
    """A queued job is cancelled (with what it makes); a running one is asked to stop. A
    finished job is left as it is. The caller commits."""
    done = session.execute(
        update(JobRecord)
        .where(JobRecord.id == job_id, JobRecord.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, finished_at=utcnow(), cancel_requested=True)
    )
    if done.rowcount == 1:  # type: ignore[attr-defined]
        set_artifact_status(session, job_id, ArtifactStatus.CANCELLED)
        return
    session.execute(
        update(JobRecord)
        .where(JobRecord.id == job_id, JobRecord.status == JobStatus.RUNNING)
        .values(cancel_requested=True)
    )


def get_visible(session: Session, key: VerifiedKey, job_id: str) -> JobRecord:
    """The job, if the caller's tenant owns it or the caller is an admin; else NotFound."""
    job = session.get(JobRecord, job_id)
    if job is None or (job.tenant != key.tenant and key.scope != "admin"):
        raise NotFound(f"job {job_id} not found")
    return job
