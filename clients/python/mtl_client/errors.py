"""The client's errors: a mistake found on this side, or the service's refusal."""

from __future__ import annotations


class ClientError(Exception):
    """A mistake found on this side, before or without asking the service."""


class ApiError(ClientError):
    """The service refused a request or could not be reached: `status` is the HTTP status (None
    when no answer came) and `message` the service's own explanation."""

    def __init__(self, status: int | None, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message if status is None else f"{message} (HTTP {status})")
