"""The FastAPI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app.api.docs import install_docs
from app.api.errors import install_error_handlers
from app.api.idempotency import Idempotency
from app.api.limits import RateLimits, StreamSlots
from app.api.main import api_router
from app.api.middleware import BodySizeLimit, NoNulInUrl, RequestContext
from app.console import install_console
from app.infra import metrics
from app.infra.embedded import EmbeddedWorker, WorkerProbe, exit_with_parent
from app.infra.logs import configure_logging
from app.infra.settings import Settings, get_settings
from app.service.predict import PredictService, keep_freed_memory
from app.service.security import VerifiedKeyCache

log = logging.getLogger(__name__)


def _lifespan(settings: Settings) -> Any:
    """What every API process does once before it answers: logs, limits, memory, migrations."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from PIL import Image

        from app.infra.threads import limit_threads
        from app.service.bootstrap import initialize

        # Here as well as in `mtl serve`: an API process that uvicorn spawns (--api-processes)
        # or a plain `uvicorn app.main:app` with uvicorn's own log config has not run it.
        configure_logging(settings.log_format)
        Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
        limit_threads(settings.resolved_torch_threads)
        if settings.serve_parent_pid is not None:
            exit_with_parent(settings.serve_parent_pid, graceful=True, who="this API process")
        keep_freed_memory()  # forward passes in threads, without a page fault per activation
        initialize(settings)
        yield

    return lifespan


def _predict_service(settings: Settings) -> PredictService:
    return PredictService(
        cache_size=settings.predict_cache_size,
        cache_bytes=settings.predict_cache_bytes,
        device=settings.predict_device,
        max_wait_s=settings.predict_batch_wait_ms / 1000,
        max_batch=settings.predict_max_batch,
        max_pixels=settings.max_image_pixels,
        decode_threads=settings.predict_decode_threads,
    )


def create_app(
    settings: Settings | None = None, *, embedded_worker: EmbeddedWorker | None = None
) -> FastAPI:
    """The API for `settings` (default: from the environment). The database must be migrated.
    With `embedded_worker` (`mtl serve`), /readyz also needs that worker running; so it does in
    the API processes of `mtl serve --api-processes N`, which learn of it from their settings."""
    settings = settings or get_settings()
    worker: EmbeddedWorker | WorkerProbe | None = embedded_worker
    if worker is None and settings.embedded_worker_ready_file is not None:
        worker = WorkerProbe(settings.embedded_worker_ready_file)
    metrics.setup(settings)

    # /docs and /redoc are served from local assets by install_docs (FastAPI's load a CDN).
    app = FastAPI(
        title="MTL model-customization service",
        version="1",
        lifespan=_lifespan(settings),
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.embedded_worker = worker
    app.state.verified_keys = VerifiedKeyCache(settings.api_key_cache_s)
    app.state.event_streams = StreamSlots(settings.max_event_streams_per_key,
                                          settings.max_event_streams)
    app.state.rate_limits = RateLimits(settings)
    app.state.predict_service = _predict_service(settings)
    app.include_router(api_router)
    install_docs(app)
    install_console(app)
    install_error_handlers(app)

    # Innermost first: the idempotency check reads a body the size limit is already counting.
    app.add_middleware(Idempotency, settings=settings)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(NoNulInUrl)
    app.add_middleware(RequestContext)  # outermost: it times and logs every answer above
    return app


def __getattr__(name: str) -> Any:
    # `uvicorn app.main:app` builds the app from the environment on first access.
    if name == "app":
        return create_app()
    raise AttributeError(name)
