"""The error answers each route can give, for the OpenAPI document: every one is
`{"detail": "<message>"}` (validation errors included, see `app.api.errors`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorResponse(BaseModel):
    """Every error answer: what went wrong, in one sentence a person can act on."""

    detail: str


# One shared component that every error answer refers to (openapi_document adds it): client
# generators then make one error type, where an inline schema per route, each titled
# ErrorResponse, made them drop the duplicates.
ERROR_REF = "#/components/schemas/ErrorResponse"


WHY = {
    401: "no API key, or an unknown one",
    403: "the route needs an admin key",
    404: "no such resource (another tenant's is answered the same)",
    409: "the resource is not in a state that allows this",
    413: "the request is over a size or count limit (the message names the setting)",
    415: "the body must be multipart/form-data",
    422: "an invalid, out-of-bounds or malformed value (the message names it)",
    429: "over a cap (open event streams, failed authentications): wait `Retry-After` seconds",
    503: "the database, the broker or the embedded worker is not available",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for FastAPI: each status with the error body (a reference to the shared
    ErrorResponse component) and why it happens. The body
    is declared as JSON explicitly (not `model=`, which FastAPI would document in the route's
    own media type, e.g. text/event-stream for a stream's errors)."""
    content = {"application/json": {"schema": {"$ref": ERROR_REF}}}
    return {code: {"description": WHY[code], "content": content} for code in codes}
