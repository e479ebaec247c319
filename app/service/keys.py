"""API keys: created (the key shown once, its hash stored) and revoked by prefix."""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.orm import Session

from app.infra.errors import NotFound
from app.infra.tables import ApiKeyRecord
from app.service.security import create_api_key


def create_key(*, session: Session, tenant: str, admin: bool) -> tuple[str, ApiKeyRecord]:
    """A new key for `tenant`, committed: (the plain key, its row)."""
    plain, row = create_api_key(session=session, tenant=tenant, admin=admin)
    session.commit()
    return plain, row


def revoke_key(*, session: Session, prefix: str) -> None:
    """Delete the key with this prefix, or NotFound (nothing is changed then)."""
    result = session.execute(delete(ApiKeyRecord).where(ApiKeyRecord.prefix == prefix))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise NotFound(f"no API key with prefix {prefix}")
    session.commit()
