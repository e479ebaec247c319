"""Caps that keep one caller from taking what every caller shares, per API process (memory-backed;
with several API processes or nodes each counts its own, so a proxy in front should cap too):
open event streams per key and in all, and failed authentications per client address. Past a
cap the answer is 429 with `Retry-After`."""

from __future__ import annotations

import time
from collections import OrderedDict, deque

from fastapi import HTTPException


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


class FailureWindow:
    """Failed authentications per client address over the last `window_s` seconds; the
    addresses seen last are kept (at most `max_addresses`), so memory stays bounded."""

    def __init__(self, limit: int, window_s: float = 60.0, max_addresses: int = 10_000) -> None:
        self.limit, self.window_s, self.max_addresses = limit, window_s, max_addresses
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self.failures.get(address)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def check(self, address: str) -> None:
        """TooMany while `address` has `limit` failures in the window."""
        now = time.monotonic()
        times = self._recent(address, now)
        if len(times) >= self.limit:
            raise TooMany(f"too many failed authentications from this address; wait "
                          f"(MTL_AUTH_FAILURES_PER_MINUTE={self.limit})",
                          int(times[0] + self.window_s - now) + 1)

    def record(self, address: str) -> None:
        now = time.monotonic()
        times = self._recent(address, now)
        times.append(now)
        self.failures[address] = times
        self.failures.move_to_end(address)
        while len(self.failures) > self.max_addresses:
            self.failures.popitem(last=False)
