"""Jobs: training and pretraining runs, their progress, and cancelling them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from app.api.deps import CurrentKey, SessionDep
from app.api.responses import errors
from app.infra.tables import JobRecord
from app.service import jobs
from app.service.jobs import JobStatus, get_visible
from app.service.pagination import DEFAULT_LIMIT, Cursor, Limit, paginate
from app.service.schemas import JobCurve, JobPublic, Page, job_public

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=errors(401, 422, 429))


@router.get("", response_model=Page[JobPublic])
def list_jobs(
    session: SessionDep,
    key: CurrentKey,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    status: Annotated[JobStatus | None, Query(description="only jobs with this status")] = None,
    tenant: Annotated[
        str | None, Query(max_length=200, description="admin keys: only this tenant's jobs")
    ] = None,
) -> Page[JobPublic]:
    """List jobs.

    The caller's jobs, newest first, one page at a time (admin keys see every tenant's, or one
    tenant's with `tenant`).
    """
    query = select(JobRecord)
    if key.scope != "admin":
        query = query.where(JobRecord.tenant == key.tenant)
    if tenant is not None:
        query = query.where(JobRecord.tenant == tenant)
    if status is not None:
        query = query.where(JobRecord.status == status)
    rows, next_cursor = paginate(
        session,
        query,
        created_at=JobRecord.created_at,
        id=JobRecord.id,
        limit=limit,
        cursor=cursor,
        newest_first=True,
    )
    return Page(data=[job_public(j) for j in rows], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobPublic, responses=errors(404))
def read_job(job_id: str, session: SessionDep, key: CurrentKey) -> JobPublic:
    """Read a job.

    Its status, phase, progress (step, total steps, loss, ETA), attempts and outcome.
    """
    return job_public(get_visible(session, key, job_id))


@router.get("/{job_id}/curve", response_model=JobCurve, responses=errors(404))
def read_job_curve(job_id: str, session: SessionDep, key: CurrentKey) -> JobCurve:
    """Read a job's loss curve.

    The loss at evenly spaced steps (at most 400 points), with the phase of each: as far as a
    running job has got, and the whole curve once it has finished. Empty for a job that has not
    reported a loss (or ran before curves were kept).
    """
    job = get_visible(session, key, job_id)
    return JobCurve(job_id=job.id, total_steps=job.total_steps, points=job.curve or [])


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=errors(404, 409))
def cancel_job(job_id: str, session: SessionDep, key: CurrentKey) -> JobPublic:
    """Cancel a job.

    A queued job is cancelled at once; a running one stops at its next step. 409 when it has
    already finished.
    """
    job = get_visible(session, key, job_id)
    jobs.cancel(session, job)
    session.refresh(job)
    return job_public(job)
