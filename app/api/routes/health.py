"""Liveness and readiness probes (no auth)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from app.api.deps import SettingsDep
from app.api.responses import errors
from app.infra.db import get_engine
from app.infra.settings import Settings

router = APIRouter(tags=["health"], responses=errors(422))


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness.

    Answered on the event loop itself, so it shows when that loop is blocked. No key needed.
    """
    return {"status": "ok"}


def _check(settings: Settings) -> str | None:
    try:
        with get_engine(settings.resolved_database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return f"database unreachable: {type(exc).__name__}"
    if settings.resolved_broker_url.startswith("filesystem"):
        folder = settings.broker_folder / "queue"
        return None if folder.is_dir() else f"broker folder {folder} is missing"
    from app.infra.broker import celery_for

    try:
        with celery_for(settings).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"broker unreachable: {type(exc).__name__}"
    return None


@router.get("/readyz", responses=errors(503))
async def readyz(request: Request, settings: SettingsDep) -> dict[str, str | int]:
    """Readiness.

    Ready when the database and the broker answer, and under `mtl serve` its worker runs;
    503 naming what is missing otherwise. No key needed. `torch_threads`: the compute threads
    this API process predicts with (`MTL_TORCH_THREADS`).
    """
    worker = request.app.state.embedded_worker
    problem = worker.problem() if worker is not None else None
    if problem is None:
        problem = await run_in_threadpool(_check, settings)
    if problem is not None:
        raise HTTPException(503, problem)
    return {"status": "ready", "torch_threads": settings.resolved_torch_threads}
