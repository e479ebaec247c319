"""Live job progress as server-sent events (`text/event-stream`), read by the console."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from app.api.deps import CurrentKey, SettingsDep
from app.api.limits import StreamSlots
from app.api.responses import errors
from app.infra.db import session_scope
from app.infra.settings import Settings
from app.infra.tables import ApiKeyRecord, JobRecord
from app.service.jobs import FINISHED, get_visible
from app.service.schemas import JobPublic, job_public
from app.service.security import VerifiedKey

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# The route's own media type is text/event-stream; its errors are JSON like every other error
# (`errors` declares their content type explicitly).
_JSON_ERRORS = errors(401, 404, 422, 429)

POLL_S = 0.5  # the worker writes progress at most every 0.5 s
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream

_EXAMPLE = (
    "retry: 2000\n\n"
    "event: job\n"
    'data: {"id": "9c1e…", "kind": "training", "status": "running", "phase": "final_pass", '
    '"progress": {"step": 41, "total_steps": 60, "fraction": 0.6833, "loss": 0.52, '
    '"eta_seconds": 3.1}, ...}\n\n'
)


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"


def _visible_job(settings: Settings, key: VerifiedKey, job_id: str) -> JobPublic:
    # A short session of its own: the stream may last for hours and must not hold a connection.
    with session_scope(settings.resolved_database_url) as session:
        return job_public(get_visible(session, key, job_id))


def _read_job(settings: Settings, job_id: str, key_prefix: str) -> JobPublic | None:
    """The job now; None when it is gone or the stream's key was revoked since it opened (a
    stream can last hours: it must not outlive its key)."""
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(JobRecord, job_id)
        if job is None or session.scalar(
            select(ApiKeyRecord.id).where(ApiKeyRecord.prefix == key_prefix,
                                          ApiKeyRecord.revoked_at.is_(None))
        ) is None:
            return None
        return job_public(job)


async def job_events(
    settings: Settings, first: JobPublic, key_prefix: str, *, poll_s: float = POLL_S
) -> AsyncIterator[str]:
    """One `job` event with the job's JSON whenever it changes, until it has finished."""
    yield "retry: 2000\n\n"
    job: JobPublic | None = first
    last_sent, quiet_since = "", asyncio.get_running_loop().time()
    while job is not None:
        data = job.model_dump_json()
        now = asyncio.get_running_loop().time()
        if data != last_sent:
            yield f"event: job\ndata: {data}\n\n"
            last_sent, quiet_since = data, now
        elif now - quiet_since >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet_since = now
        if job.status in FINISHED:
            return
        await asyncio.sleep(poll_s)
        job = await run_in_threadpool(_read_job, settings, first.id, key_prefix)


@router.get(
    "/{job_id}/events",
    response_class=EventStreamResponse,
    responses={
        200: {
            "description": "a stream of `job` events, each with the job's JSON (as GET "
            "/v1/jobs/{job_id} answers it) in its `data` line",
            "content": {"text/event-stream": {"schema": {"type": "string"}, "example": _EXAMPLE}},
        },
        **_JSON_ERRORS,
    },
)
async def stream_job_events(
    job_id: str, request: Request, settings: SettingsDep, key: CurrentKey
) -> EventStreamResponse:
    """Follow a job live (server-sent events).

    Sends the job's JSON as a `job` event at once and again whenever its status, phase, step,
    loss or ETA changes (checked every 0.5 s), with a comment line every 15 s while nothing
    changes. The stream ends after the event in which the job has finished (succeeded, failed
    or cancelled); an `EventSource` should then be closed, or it reconnects. The key goes in the
    `Authorization` header like every other call, so a browser reads the stream with `fetch`.
    """
    first = await run_in_threadpool(_visible_job, settings, key, job_id)
    slots: StreamSlots = request.app.state.event_streams
    slots.acquire(key.prefix)
    return EventStreamResponse(
        _counted(job_events(settings, first, key.prefix), slots, key.prefix),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _counted(events: AsyncIterator[str], slots: StreamSlots, key_prefix: str
                   ) -> AsyncIterator[str]:
    """The stream, holding its slot until it ends or the client goes away."""
    try:
        async for event in events:
            yield event
    finally:
        slots.release(key_prefix)
