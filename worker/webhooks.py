"""Job webhooks: once a job with a `callback_url` has finished (however it finished: in a worker,
cancelled while queued, failed by recovery), a worker POSTs the job's JSON there, signed, and
retries with exponential backoff until the receiver answers 2xx or `MTL_WEBHOOK_MAX_ATTEMPTS`
tries have failed. Every try is recorded on the job (`webhook.attempts` in its JSON).

The tenant's signing key is derived from `MTL_WEBHOOK_SECRET` (a tenant reads its own from
`GET /v1/webhooks/signing-secret`), so no tenant can sign another's deliveries. Which try is due,
claiming it and recording it are the service's (`app.service.webhooks`); this module sends.
Each worker runs `webhook_loop` in a thread.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from app.infra import outbound
from app.infra.logs import job_context
from app.infra.settings import Settings
from app.service import webhooks
from app.service.webhooks import DELIVERED

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0


def deliver_due(settings: Settings, limit: int = 20) -> int:
    """Try every webhook that is due now, MTL_WEBHOOK_CONCURRENCY at once, so one slow receiver
    holds up only its own try; the number of tries made. A worker without the secret sends none
    (another worker with it will)."""
    if not settings.webhook_secret:
        return 0
    due = webhooks.due_job_ids(settings, limit)
    if len(due) <= 1:
        return sum(deliver(settings, job_id) for job_id in due)
    with ThreadPoolExecutor(max_workers=min(len(due), settings.webhook_concurrency),
                            thread_name_prefix="webhook") as pool:
        return sum(pool.map(lambda job_id: deliver(settings, job_id), due))


def deliver(settings: Settings, job_id: str) -> bool:
    """One try of a job's webhook, if it is due and no other worker took it; True if tried."""
    if not settings.webhook_secret:
        return False
    delivery = webhooks.claim(settings, job_id)
    if delivery is None:
        return False
    started = time.monotonic()
    status_code, error = _post(settings, delivery)
    refused = error is not None and error.startswith("refused")
    status = webhooks.record(settings, delivery, status_code, error,
                             0.0 if refused else round((time.monotonic() - started) * 1000, 1))
    with job_context(job_id, delivery.request_id):
        log.log(
            logging.INFO if status == DELIVERED else logging.WARNING,
            "webhook for job %s, try %d: %s",
            job_id,
            delivery.tries,
            status if error is None else f"{error}; {status}",
            extra={"event": "webhook.attempt", "url": outbound.redacted(delivery.url),
                   "attempt": delivery.tries,
                   "status_code": status_code, "webhook_status": status},
        )
    return True


def _post(settings: Settings, delivery: webhooks.Delivery) -> tuple[int | None, str | None]:
    """The receiver's status, and what went wrong (None: it answered 2xx). A target that is not
    public is "refused" and nothing else: no status, error or timing of a private address
    reaches the tenant. The try, all of it, takes at most MTL_WEBHOOK_TIMEOUT_S."""
    try:
        target = outbound.resolve(delivery.url, allow_private=settings.webhook_allow_private)
    except outbound.Unresolvable as exc:
        return None, str(exc)
    except outbound.RefusedTarget as exc:
        return None, f"refused: {exc}"
    try:
        status_code = outbound.post_status(target, delivery.headers, delivery.body,
                                           timeout_s=settings.webhook_timeout_s)
    except Exception as exc:  # any failure (a URL that cannot be sent, say) is a failed try
        return None, f"{type(exc).__name__}: {exc}"[:500]
    if not 200 <= status_code < 300:
        return status_code, f"the receiver answered {status_code}"
    return status_code, None


def webhook_loop(settings: Settings, stop: threading.Event | None = None) -> None:
    """Deliver due webhooks every POLL_INTERVAL_S (a worker's thread)."""
    stop = stop or threading.Event()
    while not stop.wait(POLL_INTERVAL_S):
        try:
            deliver_due(settings)
        except Exception:
            log.exception("webhook delivery failed; retrying")
