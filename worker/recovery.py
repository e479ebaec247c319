"""Recovery: every unfinished job runs, whatever a worker or the broker lost. Each worker runs it
every `recovery_interval_s` (`worker.tasks.recovery_loop`)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update

from app.infra.db import session_scope
from app.infra.settings import Settings
from app.infra.tables import JobRecord, utcnow
from app.service import jobs
from app.service.jobs import ArtifactStatus, JobStatus, set_artifact_status

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # lost attempts before a job fails


def recover_orphans(settings: Settings, *, resend_all_queued: bool = False) -> list[str]:
    """Make sure every unfinished job will run, whatever the broker lost. Returns the ids sent.
    With `resend_all_queued` (a worker that has just connected to its broker, which may have
    restarted empty) every queued job is sent again at once, however recently it was sent.

    - A running job whose worker went silent (crash, kill, OOM) is re-queued, or cancelled when a
      cancel was asked for, or failed after MAX_ATTEMPTS lost attempts.
    - A queued job whose message was never sent (broker down at submit or at a re-queue) is sent.
    - A queued job whose message no worker took within `queued_resend_after_s` is sent again: the
      broker may have lost it (Redis restarted without persistence). Sending twice is safe, since
      the conditional claim drops a duplicate.

    `enqueued_at` is written only after a send succeeded, so a broker outage during recovery
    leaves the job to the next pass instead of stranding it.
    """
    url = settings.resolved_database_url
    now = utcnow()
    stale = now - timedelta(seconds=settings.job_stale_after_s)
    with session_scope(url) as session:
        lost = session.execute(
            select(JobRecord.id, JobRecord.attempts, JobRecord.cancel_requested).where(
                JobRecord.status == JobStatus.RUNNING, JobRecord.heartbeat_at < stale
            )
        ).all()
        # No worker claims a queued job with a cancel request (older versions re-queued a
        # cancelled running job whose worker died): it is cancelled here instead.
        cancelled = session.scalars(
            select(JobRecord.id).where(
                JobRecord.status == JobStatus.QUEUED, JobRecord.cancel_requested.is_(True)
            )
        ).all()
        for job_id in cancelled:
            result = session.execute(
                update(JobRecord)
                .where(JobRecord.id == job_id, JobRecord.status == JobStatus.QUEUED)
                .values(status=JobStatus.CANCELLED, finished_at=now)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                set_artifact_status(session, job_id, ArtifactStatus.CANCELLED)
    for job_id, attempts, cancel_requested in lost:
        _recover_lost(settings, job_id, attempts, cancel_requested, stale, now)
    unsent = _to_send(settings, now, resend_all_queued)
    sent = []
    for job_id, kind in unsent:
        if send_queued(settings, job_id, kind):
            sent.append(job_id)
    return sent


def _to_send(settings: Settings, now: Any, resend_all_queued: bool) -> list[Any]:
    """The queued jobs to send: never sent (after the API's moment to send them), or sent more
    than `queued_resend_after_s` ago (every queued job with `resend_all_queued`)."""
    url = settings.resolved_database_url
    resend_before = now if resend_all_queued else now - timedelta(
        seconds=settings.queued_resend_after_s)
    with session_scope(url) as session:
        unsent = session.execute(
            select(JobRecord.id, JobRecord.kind).where(
                JobRecord.status == JobStatus.QUEUED,
                or_(
                    and_(
                        JobRecord.enqueued_at.is_(None),
                        # The API sends right after committing; give it that moment (a worker
                        # that has just connected sends anyway: a duplicate is dropped).
                        JobRecord.created_at < (now if resend_all_queued
                                                else now - timedelta(seconds=30)),
                    ),
                    JobRecord.enqueued_at < resend_before,
                ),
            )
        ).all()
    return list(unsent)


def _recover_lost(
    settings: Settings,
    job_id: str,
    attempts: int,
    cancel_requested: bool,
    stale: Any,
    now: Any,
) -> None:
    """A running job whose worker is gone: cancelled, failed, or queued again (sent later by
    `recover_orphans`, with `enqueued_at` NULL until a send succeeds)."""
    owned_by_lost_worker = and_(
        JobRecord.id == job_id,
        JobRecord.status == JobStatus.RUNNING,
        JobRecord.heartbeat_at < stale,
    )
    with session_scope(settings.resolved_database_url) as session:
        if cancel_requested:
            values: dict[str, Any] = {"status": JobStatus.CANCELLED, "finished_at": now}
        elif attempts >= MAX_ATTEMPTS:
            values = {
                "status": JobStatus.FAILED,
                "finished_at": now,
                "error": f"the worker running this job was lost {attempts} times",
            }
        else:
            values = {"status": JobStatus.QUEUED, "enqueued_at": None, "worker": None}
        result = session.execute(update(JobRecord).where(owned_by_lost_worker).values(**values))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return
        if values["status"] != JobStatus.QUEUED:
            set_artifact_status(session, job_id, ArtifactStatus(values["status"].value))
        log.warning("job %s: its worker was lost; now %s", job_id, values["status"])


def send_queued(settings: Settings, job_id: str, kind: str) -> bool:
    """Send a queued job's message and record when; False (logged) when the broker is down."""
    if not jobs.send(settings, job_id, kind):
        return False
    log.warning("sent queued job %s again", job_id)
    return True
