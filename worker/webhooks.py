"""Job webhooks: once a job with a `callback_url` has finished (however it finished: in a worker,
cancelled while queued, failed by recovery), a worker POSTs the job's JSON there, signed, and
retries with exponential backoff until the receiver answers 2xx or `MTL_WEBHOOK_MAX_ATTEMPTS`
tries have failed. Every try is recorded on the job (`webhook.attempts` in its JSON).

Signature: `X-MTL-Signature: sha256=<hex>`, the HMAC-SHA256 of `<X-MTL-Timestamp>.<body>` (the
timestamp in Unix seconds, so a receiver can refuse old replays) with the job's tenant's key,
derived from `MTL_WEBHOOK_SECRET` (`app.service.security.tenant_webhook_secret`; a tenant reads its own
from `GET /v1/webhooks/signing-secret`), so no tenant can sign another's deliveries.

Each worker runs `webhook_loop` in a thread. A try is claimed with one conditional UPDATE that
moves `webhook_next_at` past the try's timeout, so two workers never send the same try, and a
worker that dies mid-try leaves it to be retried once that lease has passed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update

from app.infra.db import session_scope
from app.infra.logs import job_context
from app.infra.settings import Settings
from app.infra.tables import JobRecord, utcnow
from app.service.jobs import FINISHED
from app.service.schemas import job_public
from app.service.security import tenant_webhook_secret

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
SIGNATURE_HEADER = "X-MTL-Signature"
TIMESTAMP_HEADER = "X-MTL-Timestamp"
POLL_INTERVAL_S = 1.0


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-MTL-Signature header's value for this body sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def backoff_s(settings: Settings, tries: int) -> float:
    """The wait after the `tries`-th failed try: the base, doubled each time, at most an hour."""
    return float(min(settings.webhook_retry_base_s * 2 ** (tries - 1), 3600.0))


def _due(now: datetime) -> Any:
    return (
        JobRecord.webhook_status == PENDING,
        JobRecord.status.in_(FINISHED),
        or_(JobRecord.webhook_next_at.is_(None), JobRecord.webhook_next_at <= now),
    )


def deliver_due(settings: Settings, limit: int = 20) -> int:
    """Try every webhook that is due now; the number of tries made. A worker without the
    secret sends none (another worker with it will)."""
    if not settings.webhook_secret:
        return 0
    with session_scope(settings.resolved_database_url) as session:
        ids = list(session.scalars(select(JobRecord.id).where(*_due(utcnow())).limit(limit)))
    return sum(deliver(settings, job_id) for job_id in ids)


def deliver(settings: Settings, job_id: str) -> bool:
    """One try of a job's webhook, if it is due and no other worker took it; True if tried."""
    import httpx

    if not settings.webhook_secret:
        return False
    now = utcnow()
    lease = timedelta(seconds=settings.webhook_timeout_s + 30)
    with session_scope(settings.resolved_database_url) as session:
        taken = session.execute(
            update(JobRecord)
            .where(JobRecord.id == job_id, *_due(now))
            .values(webhook_next_at=now + lease)
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            return False
        job = session.get(JobRecord, job_id)
        assert job is not None and job.callback_url
        url, request_id, tenant = job.callback_url, job.request_id, job.tenant
        body = json.dumps(job_public(job).model_dump(mode="json")).encode()
        tries = len(job.webhook_attempts or []) + 1
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "mtl-service-webhook",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(
            tenant_webhook_secret(settings.webhook_secret, tenant), timestamp, body
        ),
        "X-MTL-Job-Id": job_id,
        "X-MTL-Delivery-Attempt": str(tries),
    }
    if request_id:
        headers["X-Request-ID"] = request_id
    started = time.monotonic()
    status_code: int | None = None
    error: str | None = None
    try:
        # Only the status matters: the answer's body is never read (a receiver that sent an
        # endless or trickling one held this thread, and every later webhook, indefinitely).
        with httpx.stream("POST", url, content=body, headers=headers,
                          timeout=settings.webhook_timeout_s) as response:
            status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"the receiver answered {status_code}"
    except Exception as exc:  # any failure (a URL httpx cannot encode, say) is a failed try
        error = f"{type(exc).__name__}: {exc}"[:500]
    attempt = {"at": utcnow().isoformat(), "status_code": status_code, "error": error,
               "duration_ms": round((time.monotonic() - started) * 1000, 1)}
    if error is None:
        status, next_at = DELIVERED, None
    elif tries >= settings.webhook_max_attempts:
        status, next_at = FAILED, None
    else:
        status, next_at = PENDING, utcnow() + timedelta(seconds=backoff_s(settings, tries))
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(JobRecord, job_id)
        if job is not None:
            job.webhook_attempts = [*(job.webhook_attempts or []), attempt]
            job.webhook_status = status
            job.webhook_next_at = next_at
    with job_context(job_id, request_id):
        log.log(
            logging.INFO if error is None else logging.WARNING,
            "webhook for job %s, try %d: %s",
            job_id,
            tries,
            status if error is None else f"{error}; {status}",
            extra={"event": "webhook.attempt", "url": url, "attempt": tries,
                   "status_code": status_code, "webhook_status": status},
        )
    return True


def webhook_loop(settings: Settings, stop: threading.Event | None = None) -> None:
    """Deliver due webhooks every POLL_INTERVAL_S (a worker's thread)."""
    stop = stop or threading.Event()
    while not stop.wait(POLL_INTERVAL_S):
        try:
            deliver_due(settings)
        except Exception:
            log.exception("webhook delivery failed; retrying")
