"""Caps that keep one caller from taking what every caller shares. Past one the answer is 429 with
`Retry-After`.

- Rate limits (the `limits` library, moving windows): uploads, training jobs and exports per
  tenant, and failed authentications per client address. The counters live where
  `MTL_RATE_LIMIT_STORAGE_URL` says: the broker's Redis in the distributed setup, so every API
  process and node counts together; this process's memory when embedded.
- Open event streams per key and in all, per API process (a stream holds a connection of the
  process that serves it)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from fastapi import HTTPException

from app.infra.settings import Settings

log = logging.getLogger(__name__)


class TooMany(HTTPException):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(429, message, headers={"Retry-After": str(max(1, retry_after_s))})


class StreamSlots:
    """Open event streams, counted per key prefix and in all."""

    def __init__(self, per_key: int, total: int) -> None:
        self.per_key, self.total = per_key, total
        self.open: dict[str, int] = {}

    def acquire(self, key_prefix: str) -> None:
        """Count one more stream for the key, or TooMany (nothing counted)."""
        if self.open.get(key_prefix, 0) >= self.per_key:
            raise TooMany(f"this key already follows {self.per_key} event streams "
                          "(MTL_MAX_EVENT_STREAMS_PER_KEY); close one first", 5)
        if sum(self.open.values()) >= self.total:
            raise TooMany(f"the service follows {self.total} event streams already "
                          "(MTL_MAX_EVENT_STREAMS); poll GET /v1/jobs/{id} instead", 5)
        self.open[key_prefix] = self.open.get(key_prefix, 0) + 1

    def release(self, key_prefix: str) -> None:
        left = self.open.get(key_prefix, 0) - 1
        if left > 0:
            self.open[key_prefix] = left
        else:
            self.open.pop(key_prefix, None)


# Each rate-limited kind of request and the setting that bounds it.
LIMIT_SETTINGS = {"uploads": "MTL_RATE_LIMIT_UPLOADS", "training": "MTL_RATE_LIMIT_TRAINING",
                  "exports": "MTL_RATE_LIMIT_EXPORTS"}


class RateLimits:
    """The rate limits of settings, counted in their storage."""

    def __init__(self, settings: Settings) -> None:
        from limits import parse
        from limits.storage import storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        url = settings.resolved_rate_limit_storage_url
        options: dict[str, Any] = ({"key_prefix": settings.rate_limit_key_prefix,
                                    "wrap_exceptions": True} if url.startswith("redis") else {})
        self.limiter = MovingWindowRateLimiter(storage_from_string(url, **options))
        # While the shared storage cannot be reached (Redis down), each process counts alone
        # rather than failing requests: an outage of the broker's Redis must not take the API
        # down with it (a job created then is sent once the broker is back).
        self.fallback = MovingWindowRateLimiter(storage_from_string("memory://"))
        self._warned_at = 0.0
        self.items = {kind: parse(getattr(settings, setting.removeprefix("MTL_").lower()))
                      for kind, setting in LIMIT_SETTINGS.items()}
        self.items["auth"] = parse(f"{settings.auth_failures_per_minute}/minute")

    def _call(self, method: str, kind: str, who: str) -> Any:
        """`method` of the shared limiter, or of this process's own while the storage is down."""
        from limits.errors import StorageError

        try:
            return getattr(self.limiter, method)(self.items[kind], kind, who)
        except StorageError as exc:
            if time.monotonic() - self._warned_at > 60:
                self._warned_at = time.monotonic()
                log.warning("rate limits: the storage is unreachable (%s); counting in this "
                            "process until it is back", exc)
            return getattr(self.fallback, method)(self.items[kind], kind, who)

    def _retry_after(self, kind: str, who: str) -> int:
        stats = self._call("get_window_stats", kind, who)
        return math.ceil(stats.reset_time - time.time())

    def hit(self, kind: str, who: str) -> None:
        """Count one request of `kind` by `who` (a tenant), or TooMany (nothing counted)."""
        if not self._call("hit", kind, who):
            raise TooMany(f"too many {kind} requests for this tenant ({LIMIT_SETTINGS[kind]}="
                          f"{self.items[kind]}); wait and try again",
                          self._retry_after(kind, who))

    def check_auth(self, address: str) -> None:
        """TooMany while `address` has made its allowed failed authentications this minute."""
        if not self._call("test", "auth", address):
            raise TooMany("too many failed authentications from this address; wait "
                          f"(MTL_AUTH_FAILURES_PER_MINUTE={self.items['auth'].amount})",
                          self._retry_after("auth", address))

    def auth_failed(self, address: str) -> None:
        self._call("hit", "auth", address)
