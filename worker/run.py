"""Running one job: claim it, run its kind's function with a reporter and a heartbeat, and record
how it ended. Each outcome writes the job and what it makes (`app.service.jobs.set_artifact_status`) in
one transaction, and only while this attempt still owns the job."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable

from app.infra import metrics
from app.infra.logs import job_context
from app.infra.settings import Settings
from app.service.jobs import ArtifactStatus, JobKind, JobStatus, set_artifact_status
from worker.lifecycle import Claim, Heartbeat, JobFailed, Reporter, claim_job
from worker.pretrain_base_model import pretrain_base_model
from worker.train_classifier import train_classifier

log = logging.getLogger(__name__)

RUNNER_OF_KIND: dict[JobKind, Callable[[Settings, str, Reporter], str]] = {
    JobKind.TRAINING: train_classifier,
    JobKind.PRETRAINING: pretrain_base_model,
}


def run_job(settings: Settings, job_id: str) -> str:
    """Claim and run one job; returns what happened (for logs and tests)."""
    claim = claim_job(settings, job_id)
    if claim is None:
        log.info(
            "job %s is not queued (finished, cancelled or taken); skipping",
            job_id,
            extra={"event": "job.skipped", "job_id": job_id},
        )
        return "skipped"
    with job_context(job_id, claim.request_id):
        if claim.waited_s is not None:
            metrics.observe_queue_wait(claim.kind, claim.waited_s)
        log.info(
            "job %s claimed (%s, attempt %d)",
            job_id,
            claim.kind.value,
            claim.attempt,
            extra={"event": "job.started", "kind": claim.kind.value, "attempt": claim.attempt,
                   "queue_wait_s": claim.waited_s},
        )
        started = time.monotonic()
        outcome = _run_claimed(settings, claim)
        seconds = time.monotonic() - started
        metrics.observe_job_run(claim.kind, outcome, seconds)
        log.info(
            "job %s ended: %s after %.1f s",
            job_id,
            outcome,
            seconds,
            extra={"event": "job.finished", "kind": claim.kind.value, "outcome": outcome,
                   "duration_s": round(seconds, 3)},
        )
    return outcome


def _run_claimed(settings: Settings, claim: Claim) -> str:
    from models.errors import MTLError, TrainingCancelled

    job_id = claim.job_id
    reporter = Reporter(settings, claim)
    runner = RUNNER_OF_KIND[claim.kind]

    def ended(status: JobStatus, error: str | None = None) -> bool:
        artifact = ArtifactStatus(status.value)  # failed or cancelled, like the job
        return reporter.finish(
            status,
            error=error,
            on_owned=lambda s: set_artifact_status(s, job_id, artifact),
        )

    heartbeat = Heartbeat(settings, claim)
    heartbeat.start()
    try:
        outcome = runner(settings, job_id, reporter)
    except TrainingCancelled:
        if reporter.timed_out:
            error = (
                f"the job ran longer than its time limit of {reporter.time_limit_s:g} s "
                f"({reporter.limit_setting})"
            )
            return "failed" if ended(JobStatus.FAILED, error) else "lost"
        return "cancelled" if ended(JobStatus.CANCELLED) else "lost"
    except (JobFailed, MTLError) as exc:
        ended(JobStatus.FAILED, str(exc))
        return "failed"
    except Exception as exc:
        log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
        ended(JobStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        return "failed"
    finally:
        heartbeat.stop()
    return outcome
