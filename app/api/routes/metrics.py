"""Prometheus metrics (no key; off unless MTL_METRICS_ENABLED)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response
from sqlalchemy import func, select

from app.api.deps import SettingsDep
from app.infra import metrics
from app.infra.db import get_engine
from app.infra.settings import Settings
from app.infra.tables import JobRecord

router = APIRouter(tags=["health"])


def _job_counts(settings: Settings) -> dict[tuple[str, str], int]:
    query = select(JobRecord.kind, JobRecord.status, func.count()).group_by(
        JobRecord.kind, JobRecord.status
    )
    with get_engine(settings.resolved_database_url).connect() as conn:
        return {(kind, status): count for kind, status, count in conn.execute(query)}


# Left out of the OpenAPI document: it is for a scraper, not for API clients.
@router.get("/metrics", include_in_schema=False)
def prometheus_metrics(settings: SettingsDep) -> Response:
    """The API's and the workers' metrics in Prometheus' text format."""
    if not settings.metrics_enabled or not metrics.enabled():
        raise HTTPException(404, "metrics are off (MTL_METRICS_ENABLED)")
    body, content_type = metrics.exposition(_job_counts(settings))
    return Response(body, media_type=content_type)
