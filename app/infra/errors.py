"""Errors a caller can cause, raised anywhere below the routes and mapped to one HTTP status in
one place (`app.api.errors`): the message becomes `{"detail": message}`. The ML core's own errors
(`models.errors`) are mapped there too, by `http_status`."""

from __future__ import annotations

from models.errors import CheckpointError, ConfigError, DatasetError, MTLError, TrainingCancelled

# The ML core's error types, most specific first: what each means for a request.
CORE_ERROR_STATUS: tuple[tuple[type[MTLError], int], ...] = (
    (ConfigError, 422),  # a parameter the core refuses
    (DatasetError, 422),  # images or data it cannot use
    (CheckpointError, 409),  # a model that is not (yet) usable
    (TrainingCancelled, 409),
    (MTLError, 400),
)


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


class NotFound(ServiceError):
    """No such row, or another tenant's (answered alike, so ids do not leak across tenants)."""

    status = 404


def no_nul(value: str, what: str) -> str:
    """`value` unchanged, or InvalidInput: PostgreSQL cannot store a NUL byte in text."""
    if "\x00" in value:
        raise InvalidInput(f"{what} must not contain NUL bytes")
    return value


def http_status(exc: ServiceError | MTLError) -> int:
    """The HTTP status answering `exc`: its own for a ServiceError, by type for the core's."""
    if isinstance(exc, ServiceError):
        return exc.status
    return next(status for kind, status in CORE_ERROR_STATUS if isinstance(exc, kind))
