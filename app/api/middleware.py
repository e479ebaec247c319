"""The service's ASGI middleware: the request context (request id, one log line and the latency
metric per request), and the limits every request meets before routing (body size, NUL bytes)."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.infra import metrics
from app.infra.logs import request_id_from, request_id_var

access_log = logging.getLogger("mtl.access")

REQUEST_ID_HEADER = "X-Request-ID"


class RequestContext:
    """For every HTTP request: its id (the caller's `X-Request-ID`, or a new one) set for
    everything logged below it and answered in the same header; then one log line (method,
    route template, status, duration, request id, tenant) and the latency metric by route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(REQUEST_ID_HEADER.lower().encode())
        request_id = request_id_from(incoming.decode("latin-1") if incoming else None)
        # Not reset afterwards: each request runs in a context of its own, and the error
        # handler outside this middleware still logs an unexpected error with the id.
        request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                answer = MutableHeaders(scope=message)
                answer.append(REQUEST_ID_HEADER, request_id)
                # Browsers must not guess a type (a JSON answer run as HTML, an upload as script).
                answer.setdefault("X-Content-Type-Options", "nosniff")
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            template = route_template(scope)
            metrics.observe_request(scope["method"], template, status, seconds)
            access_log.info(
                "%s %s %d",
                scope["method"],
                scope.get("path", ""),
                status,
                extra={
                    "event": "request",
                    "method": scope["method"],
                    "route": template,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "tenant": (scope.get("state") or {}).get("tenant"),
                },
            )


def route_template(scope: Scope) -> str:
    """The route template of a request (`/v1/classifiers/{classifier_id}`), also for answers
    given before routing (an idempotent replay, a 409 of the idempotency layer, a 413): those
    are matched here; "unmatched" only for a path no route has (a 404)."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    routes = getattr(getattr(scope.get("app"), "router", None), "routes", [])
    return _template(routes, scope.get("path", "")) or "unmatched"


def _template(routes: list[Any], path: str, prefix: str = "") -> str | None:
    """The template of the first route whose pattern matches `path`, looking into included
    routers (their own prefix taken off the path)."""
    for candidate in routes:
        inner = getattr(candidate, "original_router", None)
        if inner is not None:
            own = getattr(getattr(candidate, "include_context", None), "prefix", "") or ""
            if path.startswith(own) and (found := _template(inner.routes, path[len(own):],
                                                             prefix + own)):
                return found
            continue
        pattern = getattr(candidate, "path_regex", None)
        if pattern is not None and pattern.match(path):
            return prefix + str(candidate.path)
    return None


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Answer 413 to a request body over `max_bytes`, by its Content-Length or as it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await JSONResponse({"detail": self._message()}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"request body is over the limit of {self.max_bytes} bytes (MTL_MAX_UPLOAD_BYTES)"


class NoNulInUrl:
    """Answer 422 to a URL whose path or query holds a NUL byte (`%00`): ids and names reach
    PostgreSQL, which cannot store or compare text with NUL in it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope.get("path", "")
            or b"%00" in scope.get("query_string", b"")
            or b"\x00" in scope.get("query_string", b"")
        ):
            response = JSONResponse({"detail": "the URL must not contain NUL bytes"}, 422)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
