"""Logs: one JSON object per line and event (`MTL_LOG_FORMAT=json`, the default), in the API and
the workers alike, each line carrying the request id and job id it belongs to.

The API takes a request's id from its `X-Request-ID` header (or makes one), answers it in the same
header, logs it on the request's line and stores it on any job the request creates; the worker
running that job puts it on every line it logs for the job. Both are context variables, so a
line logged anywhere below a request or a job carries them without being passed along.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("mtl_request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("mtl_job_id", default=None)

# What an incoming X-Request-ID may be; anything else is replaced by a new id.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
# LogRecord's own attributes: everything else on a record came through `extra=` and is logged.
# uvicorn's `color_message` (the message with terminal colours) is left out too.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


def request_id_from(header: str | None) -> str:
    """The caller's request id when it is a reasonable one, else a new one."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON: time, level, logger, message, the request and job ids of
    the context it was logged in, and every `extra=` field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _ContextText(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = [f"{k}={getattr(record, k)}" for k in ("request_id", "job_id") if hasattr(record, k)]
        return f"{text} [{' '.join(ids)}]" if ids else text


_make_record = logging.getLogRecordFactory()


def _record_with_context(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Every record is stamped with the request and job ids of the context it was made in (when
    it is made, so a handler that formats it later, elsewhere, still has them)."""
    record = _make_record(*args, **kwargs)
    request_id, job_id = request_id_var.get(), job_id_var.get()
    if request_id:
        record.request_id = request_id
    if job_id:
        record.job_id = job_id
    return record


logging.setLogRecordFactory(_record_with_context)


class _ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure_logging` installs (so a second call replaces it)."""


def configure_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    """Log to stderr in `fmt` ('json' or 'text') through the root logger, uvicorn's loggers and
    Python's warnings included (their own handlers removed; the API logs each request itself,
    so uvicorn's access log is off). Other handlers on the root logger (pytest's) are left alone."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ServiceHandler)]:
        root.removeHandler(handler)
    handler = _ServiceHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json"
        else _ContextText("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # Library warnings (e.g. Celery's about running as root) as log lines, not raw stderr text.
    logging.captureWarnings(True)


@contextmanager
def job_context(job_id: str, request_id: str | None) -> Iterator[None]:
    """Lines logged inside carry this job's id and the id of the request that created it."""
    job_token = job_id_var.set(job_id)
    request_token = request_id_var.set(request_id)
    try:
        yield
    finally:
        request_id_var.reset(request_token)
        job_id_var.reset(job_token)
