"""A claimed job's lifecycle in the worker: claiming the row, the heartbeat while it runs, and
reporting its progress, phase and outcome.

Ownership: claiming a queued job increments `attempts`, and every later write is conditional on
that attempt still owning a running job. A worker that lost its job (re-queued after it went
silent) therefore stops at its next step and can never complete it a second time.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select, update

from app.infra.db import session_scope
from app.infra.settings import Settings
from app.infra.tables import JobRecord, utcnow
from app.service.jobs import (
    RUNNING_PHASES,
    ArtifactStatus,
    JobKind,
    JobPhase,
    JobStatus,
    set_artifact_status,
)

log = logging.getLogger(__name__)


class JobFailed(Exception):
    """The job cannot run as asked; the message is shown to the user."""


@dataclass
class Claim:
    job_id: str
    attempt: int
    kind: JobKind
    # The request that created the job (its log lines carry it) and, on a first attempt, how
    # long the job waited for a worker.
    request_id: str | None = None
    waited_s: float | None = None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_job(settings: Settings, job_id: str) -> Claim | None:
    """Mark a queued job running for this worker; None when it is not ours to run."""
    url = settings.resolved_database_url
    now = utcnow()
    with session_scope(url) as session:
        result = session.execute(
            update(JobRecord)
            .where(
                JobRecord.id == job_id,
                JobRecord.status == JobStatus.QUEUED,
                JobRecord.cancel_requested.is_(False),
            )
            .values(
                status=JobStatus.RUNNING,
                attempts=JobRecord.attempts + 1,
                worker=worker_name(),
                heartbeat_at=now,
                started_at=now,
                finished_at=None,
                error=None,
                phase=JobPhase.PREPARING,
            )
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return None
        job = session.get(JobRecord, job_id)
        assert job is not None
        if job.kind == JobKind.TRAINING:
            set_artifact_status(session, job_id, ArtifactStatus.TRAINING)
        created = job.created_at
        if created.tzinfo is None:  # SQLite hands back naive datetimes; all are UTC
            created = created.replace(tzinfo=now.tzinfo)
        waited = (now - created).total_seconds() if job.attempts == 1 else None
        return Claim(job_id, job.attempts, JobKind(job.kind), job.request_id, waited)


# A curve of every step would grow with the job; this many points draw it as well.
MAX_CURVE_POINTS = 400


class LossCurve:
    """The loss at the steps that are multiples of a stride, at most MAX_CURVE_POINTS: when full,
    the stride doubles and the points off it are dropped, so a job of any length keeps its whole
    curve, evenly spaced."""

    def __init__(self) -> None:
        self._points: list[dict[str, Any]] = []
        self._stride = 1

    def add(self, step: int, loss: float, phase: str | None) -> None:
        if step % self._stride:
            return
        self._points.append({"step": step, "loss": round(loss, 5), "phase": phase})
        if len(self._points) > MAX_CURVE_POINTS:
            self._stride *= 2
            self._points = [p for p in self._points if p["step"] % self._stride == 0]

    def points(self) -> list[dict[str, Any]]:
        return list(self._points)


class Reporter:
    """Progress and cancellation for one claimed job, written at most every `interval` seconds."""

    def __init__(self, settings: Settings, claim: Claim, interval: float = 0.5) -> None:
        self.url = settings.resolved_database_url
        self.claim = claim
        self.interval = interval
        self._last_write = 0.0
        self._unwritten: dict[str, Any] = {}  # the latest progress the rate limit held back
        self._last_check = 0.0
        self._stop = False
        self._start = time.monotonic()
        self._first_step: int | None = None
        # A solo-pool worker cannot enforce Celery's time limits, so the limit is checked
        # between steps like a cancel; a pretraining run then checkpoints before it stops.
        self.time_limit_s, self.limit_setting = (
            (settings.pretraining_time_limit_s, "MTL_PRETRAINING_TIME_LIMIT_S")
            if claim.kind == JobKind.PRETRAINING
            else (settings.training_time_limit_s, "MTL_TRAINING_TIME_LIMIT_S")
        )
        self._deadline = self._start + self.time_limit_s
        self.timed_out = False
        self._phase: str | None = None
        self.curve = LossCurve()

    def owned(self) -> Any:
        """The condition a write of this attempt's needs: the job is still its own and running."""
        return and_(
            JobRecord.id == self.claim.job_id,
            JobRecord.attempts == self.claim.attempt,
            JobRecord.status == JobStatus.RUNNING,
        )

    def progress(self, step: int, total: int, loss: float | None) -> None:
        now = time.monotonic()
        if self._first_step is None:
            self._first_step, self._start = step - 1, now
        clean_loss = loss if loss is not None and loss == loss else None  # NaN is not JSON
        if clean_loss is not None:
            self.curve.add(step, clean_loss, self._phase)
        if now - self._last_write < self.interval and step < total:
            self._unwritten = {"step": step, "total_steps": total, "loss": clean_loss}
            return
        self._last_write, self._unwritten = now, {}
        done = step - (self._first_step or 0)
        eta = (now - self._start) / done * (total - step) if done > 0 else None
        with session_scope(self.url) as session:
            result = session.execute(
                update(JobRecord)
                .where(self.owned())
                .values(
                    step=step,
                    total_steps=total,
                    loss=clean_loss,
                    eta_seconds=None if eta is None else round(eta, 1),
                    heartbeat_at=utcnow(),
                    curve=self.curve.points(),
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                self._stop = True

    def set_phase(self, phase: JobPhase) -> None:
        """Record what the job does next (one of RUNNING_PHASES); written at once, as phases
        are few."""
        assert phase in RUNNING_PHASES, phase
        self._phase = str(phase)
        with session_scope(self.url) as session:
            session.execute(update(JobRecord).where(self.owned()).values(phase=phase))

    def should_stop(self) -> bool:
        """True once the job was cancelled, this attempt no longer owns it, or its time is up."""
        now = time.monotonic()
        if now > self._deadline:
            self.timed_out = True
            return True
        if not self._stop and now - self._last_check >= self.interval:
            self._last_check = now
            with session_scope(self.url) as session:
                row = session.execute(
                    select(JobRecord.cancel_requested).where(self.owned())
                ).first()
            self._stop = row is None or bool(row[0])
        return self._stop

    def finish(
        self,
        status: JobStatus,
        *,
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
        on_owned: Callable[[Any], None] | None = None,
    ) -> bool:
        """Record the outcome, with `on_owned(session)` in the same transaction; False when this
        attempt no longer owns the job (nothing is written then).

        A success is not recorded over a cancel that arrived after the last `should_stop` check
        (a cancel, or the delete of the classifier, while the job saved): that raises
        TrainingCancelled instead, for the caller to record the job as cancelled."""
        from models.errors import TrainingCancelled

        owned = self.owned()
        if status == JobStatus.SUCCEEDED:
            owned = and_(owned, JobRecord.cancel_requested.is_(False))
        with session_scope(self.url) as session:
            values: dict[str, Any] = {
                "status": status,
                "finished_at": utcnow(),
                "error": error,
                "eta_seconds": None,
                "heartbeat_at": utcnow(),
                "phase": None,
                "curve": self.curve.points(),
            }
            if metrics is not None:
                values["metrics"] = metrics
            if status == JobStatus.SUCCEEDED:
                values["step"] = JobRecord.total_steps
            else:  # a stopped job shows how far it got
                values.update(self._unwritten)
            result = session.execute(update(JobRecord).where(owned).values(**values))
            if result.rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()
                if status == JobStatus.SUCCEEDED and session.scalar(
                    select(JobRecord.cancel_requested).where(self.owned())
                ):
                    self._stop = True
                    raise TrainingCancelled("the job was cancelled as it finished")
                return False
            if on_owned is not None:
                on_owned(session)
            return True


class Heartbeat(threading.Thread):
    """Marks the claimed job alive every `job_stale_after_s / 6` seconds while it runs, however
    long a step (loading data, one big iteration) takes. Stops when this attempt loses the job."""

    def __init__(self, settings: Settings, claim: Claim) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{claim.job_id}")
        self.url = settings.resolved_database_url
        self.claim = claim
        self.interval = max(0.2, settings.job_stale_after_s / 6)
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                with session_scope(self.url) as session:
                    result = session.execute(
                        update(JobRecord)
                        .where(
                            JobRecord.id == self.claim.job_id,
                            JobRecord.attempts == self.claim.attempt,
                            JobRecord.status == JobStatus.RUNNING,
                        )
                        .values(heartbeat_at=utcnow())
                    )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    return
            except Exception:  # a missed beat is retried at the next interval
                log.exception("heartbeat for job %s failed", self.claim.job_id)

    def stop(self) -> None:
        self._stopped.set()
