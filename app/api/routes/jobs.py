"""Jobs: training and pretraining runs, their progress, and cancelling them."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.api.responses import errors
from app.deps import CurrentKey, SessionDep
from app.schemas import JobPublic, as_utc
from app.settings import Settings
from app.tables import ApiKey, BaseModel, Classifier, Job, utcnow

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=errors(401, 422))
log = logging.getLogger(__name__)

FINISHED = ("succeeded", "failed", "cancelled")


def send_job(session: Session, settings: Settings, task_name: str, job_id: str) -> None:
    """Enqueue a committed job. If the broker is down the job stays queued without
    `enqueued_at`, and a worker's recovery loop sends it later."""
    from worker.celery_app import enqueue

    try:
        enqueue(settings, task_name, job_id)
    except Exception:
        log.exception("could not enqueue job %s; a worker will pick it up later", job_id)
        return
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
    session.commit()


def phase_of(job: Job) -> str | None:
    if job.status == "queued":
        return "queued"
    if job.status == "running":
        return job.phase or "preparing"
    return None


def to_public(job: Job) -> JobPublic:
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
                "eta_seconds": job.eta_seconds if job.status == "running" else None,
            },
            "metrics": job.metrics,
            "error": job.error,
            "classifier_id": job.classifier_id,
            "base_model_id": job.base_model_id,
            "created_at": as_utc(job.created_at),
            "started_at": as_utc(job.started_at),
            "finished_at": as_utc(job.finished_at),
            "attempts": job.attempts,
        }
    )


def get_visible(session: Session, key: ApiKey, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or (job.tenant != key.tenant and key.scope != "admin"):
        raise HTTPException(404, f"job {job_id} not found")
    return job


@router.get("", response_model=list[JobPublic])
def list_jobs(session: SessionDep, key: CurrentKey) -> list[JobPublic]:
    """List jobs.

    The caller's jobs, newest first (admin keys see every tenant's).
    """
    query = select(Job).order_by(Job.created_at.desc())
    if key.scope != "admin":
        query = query.where(Job.tenant == key.tenant)
    return [to_public(j) for j in session.scalars(query).all()]


@router.get("/{job_id}", response_model=JobPublic, responses=errors(404))
def read_job(job_id: str, session: SessionDep, key: CurrentKey) -> JobPublic:
    """Read a job.

    Its status, phase, progress (step, total steps, loss, ETA), attempts and outcome.
    """
    return to_public(get_visible(session, key, job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=errors(404, 409))
def cancel_job(job_id: str, session: SessionDep, key: CurrentKey) -> JobPublic:
    """Cancel a job.

    A queued job is cancelled at once; a running one stops at its next step. 409 when it has
    already finished.
    """
    job = get_visible(session, key, job_id)
    if job.status in FINISHED:
        raise HTTPException(409, f"job {job_id} already {job.status}")
    done = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == "queued")
        .values(status="cancelled", finished_at=utcnow(), cancel_requested=True)
    )
    if done.rowcount == 1:  # type: ignore[attr-defined]
        if job.classifier_id:
            session.execute(
                update(Classifier)
                .where(Classifier.id == job.classifier_id)
                .values(status="cancelled")
            )
        if job.kind == "pretraining" and job.base_model_id:
            session.execute(
                update(BaseModel)
                .where(BaseModel.id == job.base_model_id)
                .values(status="cancelled")
            )
    else:
        session.execute(update(Job).where(Job.id == job.id).values(cancel_requested=True))
    session.commit()
    session.refresh(job)
    return to_public(job)
