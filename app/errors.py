"""Errors a caller can cause, raised anywhere below the routes and mapped to one HTTP status in
one place (`app.main`): the message becomes `{"detail": message}`."""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses; `status` is the HTTP status to answer with."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class InvalidInput(ServiceError):
    """A value out of its bounds or of the wrong type (422)."""

    status = 422


def no_nul(value: str, what: str) -> str:
    """`value` unchanged, or InvalidInput: PostgreSQL cannot store a NUL byte in text."""
    if "\x00" in value:
        raise InvalidInput(f"{what} must not contain NUL bytes")
    return value
