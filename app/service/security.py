"""API keys: `mtl_<prefix>_<secret>`, stored only as a sha256 hash with a tenant and a scope."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.infra.db import session_factory
from app.infra.tables import ApiKeyRecord

SCOPES = ("user", "admin")


def hash_key(key: str) -> str:
    # Keys are 190+ random bits, so a fast unsalted hash is enough (no password stretching needed).
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str | None:
    parts = key.split("_")
    return parts[1] if len(parts) == 3 and parts[0] == "mtl" else None


def tenant_webhook_secret(server_secret: str, tenant: str) -> str:
    """The key that signs `tenant`'s webhooks (`GET /v1/webhooks/signing-secret`), derived from
    MTL_WEBHOOK_SECRET: each tenant verifies its own deliveries and cannot sign another's."""
    digest = hmac.new(server_secret.encode(), b"webhooks:" + tenant.encode(), hashlib.sha256)
    return f"whsec_{digest.hexdigest()}"


def create_api_key(*, session: Session, tenant: str, admin: bool) -> tuple[str, ApiKeyRecord]:
    """Add a new key; returns the plain key (shown once) and its row (not yet committed)."""
    prefix = secrets.token_hex(4)
    key = f"mtl_{prefix}_{secrets.token_urlsafe(24)}"
    row = ApiKeyRecord(
        prefix=prefix, key_hash=hash_key(key), tenant=tenant, scope="admin" if admin else "user"
    )
    session.add(row)
    return key, row


def register_key(*, session: Session, key: str, tenant: str, admin: bool) -> None:
    """Register a key chosen by the operator (`MTL_ADMIN_KEY`); idempotent."""
    digest = hash_key(key)
    row = session.scalar(select(ApiKeyRecord).where(ApiKeyRecord.key_hash == digest))
    scope = "admin" if admin else "user"
    if row is None:
        prefix = key_prefix(key) or "env-" + digest[:8]
        session.add(
            ApiKeyRecord(prefix=prefix, key_hash=digest, tenant=tenant, scope=scope, from_env=True)
        )
    else:  # the operator's key works, even if it was revoked through the API before
        row.scope, row.from_env, row.revoked_at = scope, True, None


def revoke_env_keys(*, session: Session, keep: str | None) -> int:
    """Delete keys registered from an earlier `MTL_ADMIN_KEY` (all but `keep`): changing the
    setting and restarting must revoke the old key. Returns how many were deleted."""
    query = delete(ApiKeyRecord).where(ApiKeyRecord.from_env.is_(True))
    if keep is not None:
        query = query.where(ApiKeyRecord.key_hash != hash_key(keep))
    return int(session.execute(query).rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class VerifiedKey:
    """The caller, once its key was found in the database: whose data it may see (its tenant)
    and whether it may use the admin routes (its scope)."""

    prefix: str
    tenant: str
    scope: str


class KeyRevoked(Exception):
    """The key was valid once: an admin revoked it."""

    def __init__(self, prefix: str, revoked_at: datetime) -> None:
        self.prefix, self.revoked_at = prefix, revoked_at
        super().__init__(f"API key {prefix} was revoked at {revoked_at:%Y-%m-%d %H:%M} UTC; ask "
                         "an admin for a new one")


def lookup_key(*, database_url: str, digest: str) -> VerifiedKey | None:
    """The key with this hash, read in a short session of its own; None when there is none,
    KeyRevoked when it was revoked."""
    session = session_factory(database_url)()
    try:
        row = session.scalar(select(ApiKeyRecord).where(ApiKeyRecord.key_hash == digest))
        if row is not None and row.revoked_at is not None:
            raise KeyRevoked(row.prefix, row.revoked_at)
        return None if row is None else VerifiedKey(row.prefix, row.tenant, row.scope)
    finally:
        session.close()


class VerifiedKeyCache:
    """Keys found in the database in the last `ttl_s` seconds, by their hash, so that a client's
    requests do not each ask the database (issue 13: that, and the threads it took, were most of
    an authenticated request's time). Only found keys are kept (a new key works at once; unknown
    ones cannot fill the cache); at most `max_entries`, the oldest dropped first. A key revoked
    through this process is forgotten at once; revoked elsewhere (another API process, the
    database) it keeps working here for at most `ttl_s` seconds (`MTL_API_KEY_CACHE_S`)."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, VerifiedKey]] = OrderedDict()
        # Prefixes revoked through this process in the last `ttl_s`: a request that read the key
        # just before the revocation committed must not put it back after `forget`.
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> VerifiedKey | None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if time.monotonic() >= entry[0]:
                del self._entries[digest]
                return None
            return entry[1]

    def put(self, digest: str, key: VerifiedKey) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if self._revoked.get(key.prefix, 0.0) > time.monotonic():
                return
            self._entries.pop(digest, None)
            self._entries[digest] = (time.monotonic() + self.ttl_s, key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget(self, prefix: str) -> None:
        """Drop the key with this prefix (revoked through this process), and keep it out."""
        with self._lock:
            now = time.monotonic()
            self._revoked = {p: t for p, t in self._revoked.items() if t > now}
            self._revoked[prefix] = now + self.ttl_s
            for digest in [d for d, (_, k) in self._entries.items() if k.prefix == prefix]:
                del self._entries[digest]

    def __len__(self) -> int:
        return len(self._entries)
