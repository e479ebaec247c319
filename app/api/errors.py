"""The one place where errors become HTTP answers: a caller's mistake (the service's
`ServiceError`, the ML core's `MTLError`, a validation error) is a 4xx with `{"detail": message}`;
anything else is a logged 500 that says nothing of its cause."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.middleware import BodyTooLarge
from app.infra.errors import ServiceError, http_status
from models.errors import MTLError

log = logging.getLogger(__name__)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if err.get("type") == "json_invalid":
            return f"malformed JSON: {err.get('msg')}"
        msg = str(err.get("msg")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Every error answer of `app` as `{"detail": message}`, with the status its kind means."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc.__cause__, BodyTooLarge):
            # A JSON body over the limit that arrived without a Content-Length (chunked):
            # FastAPI wraps the limit's exception in its own 400 while reading the body.
            return JSONResponse({"detail": str(exc.__cause__)}, 413)
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer to a JSON body that is not even text (invalid UTF-8): malformed
            # JSON, which this API answers with 422 like any other.
            return JSONResponse({"detail": "malformed JSON: the body is not UTF-8 text"}, 422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(ServiceError)
    @app.exception_handler(MTLError)
    async def _refused(_: Request, exc: Exception) -> JSONResponse:
        # The one place a caller's mistake becomes a 4xx, the service's and the ML core's alike.
        assert isinstance(exc, ServiceError | MTLError)
        return JSONResponse({"detail": str(exc)}, status_code=http_status(exc))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse({"detail": "internal server error"}, status_code=500)
