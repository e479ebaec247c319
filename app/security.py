"""API keys: `mtl_<prefix>_<secret>`, stored only as a sha256 hash with a tenant and a scope."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.tables import ApiKeyRecord

SCOPES = ("user", "admin")


def hash_key(key: str) -> str:
    # Keys are 190+ random bits, so a fast unsalted hash is enough (no password stretching needed).
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str | None:
    parts = key.split("_")
    return parts[1] if len(parts) == 3 and parts[0] == "mtl" else None


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
    else:
        row.scope, row.from_env = scope, True


def revoke_env_keys(*, session: Session, keep: str | None) -> int:
    """Delete keys registered from an earlier `MTL_ADMIN_KEY` (all but `keep`): changing the
    setting and restarting must revoke the old key. Returns how many were deleted."""
    query = delete(ApiKeyRecord).where(ApiKeyRecord.from_env.is_(True))
    if keep is not None:
        query = query.where(ApiKeyRecord.key_hash != hash_key(keep))
    return int(session.execute(query).rowcount)  # type: ignore[attr-defined]


def find_key(*, session: Session, key: str) -> ApiKeyRecord | None:
    return session.scalar(select(ApiKeyRecord).where(ApiKeyRecord.key_hash == hash_key(key)))
