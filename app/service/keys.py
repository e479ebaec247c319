"""API keys: created (the key shown once, its hash stored) and revoked by prefix."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.infra.errors import NotFound, ServiceError
from app.infra.tables import ApiKeyRecord, utcnow
from app.service.security import create_api_key


def create_key(*, session: Session, tenant: str, admin: bool) -> tuple[str, ApiKeyRecord]:
    """A new key for `tenant`, committed: (the plain key, its row)."""
    plain, row = create_api_key(session=session, tenant=tenant, admin=admin)
    session.commit()
    return plain, row


def revoke_key(*, session: Session, prefix: str, revoked_by: str | None = None) -> None:
    """Mark the key with this prefix revoked (its row stays: its next use is answered "revoked"),
    or NotFound when there is no such key in use (nothing is changed then); 409 when it is the
    key asking (`revoked_by`)."""
    if prefix == revoked_by:
        raise ServiceError("a key cannot revoke itself; revoke it with another admin key", 409)
    result = session.execute(
        update(ApiKeyRecord)
        .where(ApiKeyRecord.prefix == prefix, ApiKeyRecord.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise NotFound(f"no API key in use with prefix {prefix}")
    session.commit()
