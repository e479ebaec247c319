"""Job webhooks' state (the HTTP POST itself is the worker's, worker/webhooks.py): which
deliveries are due, claiming one try, recording its outcome with the backoff to the next.

A try is claimed with one conditional UPDATE that moves `webhook_next_at` past the try's timeout,
so two workers never send the same try, and a worker that dies mid-try leaves it to be retried
once that lease has passed. Signed twice with the job's tenant's key
(`security.tenant_webhook_secret`): in the Standard Webhooks form (`webhook-id`,
`webhook-timestamp`, `webhook-signature: v1,<base64>`, the HMAC-SHA256 of
`<id>.<timestamp>.<body>` keyed with the secret's base64 part, decoded), so receivers can use
the ready-made verifiers; and as before, `X-MTL-Signature: sha256=<hex>`, the HMAC-SHA256 of
`<X-MTL-Timestamp>.<body>` keyed with the whole secret string."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update

from app.infra.db import session_scope
from app.infra.settings import Settings
from app.infra.tables import JobRecord, utcnow
from app.service.jobs import FINISHED
from app.service.schemas import job_public
from app.service.security import tenant_webhook_secret

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
SIGNATURE_HEADER = "X-MTL-Signature"
TIMESTAMP_HEADER = "X-MTL-Timestamp"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-MTL-Signature header's value for this body sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def standard_signature(secret: str, message_id: str, timestamp: str, body: bytes) -> str:
    """The Standard Webhooks `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of
    `<id>.<timestamp>.<body>`, keyed with the bytes the secret's `whsec_` part encodes."""
    key = base64.b64decode(secret.removeprefix("whsec_") + "==")
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def backoff_s(settings: Settings, tries: int) -> float:
    """The wait after the `tries`-th failed try: the base, doubled each time, at most an hour."""
    return float(min(settings.webhook_retry_base_s * 2 ** (tries - 1), 3600.0))


def _due(now: datetime) -> Any:
    return (
        JobRecord.webhook_status == PENDING,
        JobRecord.status.in_(FINISHED),
        or_(JobRecord.webhook_next_at.is_(None), JobRecord.webhook_next_at <= now),
    )


def due_job_ids(settings: Settings, limit: int) -> list[str]:
    """Jobs whose webhook has a try due now (at most `limit`)."""
    with session_scope(settings.resolved_database_url) as session:
        return list(session.scalars(select(JobRecord.id).where(*_due(utcnow())).limit(limit)))


@dataclass(frozen=True)
class Delivery:
    """One claimed try: where to send what, signed, with which headers."""

    job_id: str
    url: str
    request_id: str | None
    body: bytes
    tries: int
    headers: dict[str, str]


def claim(settings: Settings, job_id: str) -> Delivery | None:
    """The job's next try, claimed for this worker (its lease covers the send's timeout), or None
    if it is not due or another worker took it."""
    now = utcnow()
    lease = timedelta(seconds=settings.webhook_timeout_s + 30)
    with session_scope(settings.resolved_database_url) as session:
        taken = session.execute(
            update(JobRecord)
            .where(JobRecord.id == job_id, *_due(now))
            .values(webhook_next_at=now + lease)
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            return None
        job = session.get(JobRecord, job_id)
        assert job is not None and job.callback_url
        url, request_id, tenant = job.callback_url, job.request_id, job.tenant
        body = json.dumps(job_public(job).model_dump(mode="json")).encode()
        tries = len(job.webhook_attempts or []) + 1
    timestamp = str(int(time.time()))
    assert settings.webhook_secret
    secret = tenant_webhook_secret(settings.webhook_secret, tenant)
    message_id = f"msg_{job_id}"  # one message per job: every retry of it has the same id
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "mtl-service-webhook",
        "webhook-id": message_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": standard_signature(secret, message_id, timestamp, body),
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        "X-MTL-Job-Id": job_id,
        "X-MTL-Delivery-Attempt": str(tries),
    }
    if request_id:
        headers["X-Request-ID"] = request_id
    return Delivery(job_id, url, request_id, body, tries, headers)


def record(settings: Settings, delivery: Delivery, status_code: int | None, error: str | None,
           duration_ms: float) -> str:
    """Record a try's outcome on the job; its webhook status now (pending: retried after the
    backoff; failed after MTL_WEBHOOK_MAX_ATTEMPTS tries; delivered)."""
    attempt = {"at": utcnow().isoformat(), "status_code": status_code, "error": error,
               "duration_ms": duration_ms}
    if error is None:
        status, next_at = DELIVERED, None
    elif delivery.tries >= settings.webhook_max_attempts:
        status, next_at = FAILED, None
    else:
        status, next_at = PENDING, utcnow() + timedelta(seconds=backoff_s(settings, delivery.tries))
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(JobRecord, delivery.job_id)
        if job is not None:
            job.webhook_attempts = [*(job.webhook_attempts or []), attempt]
            job.webhook_status = status
            job.webhook_next_at = next_at
    return status
