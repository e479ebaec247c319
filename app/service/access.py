"""Rows a caller may see: a tenant sees its own; another tenant's row is answered like a missing
one, so ids do not leak across tenants."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy.orm import Session

from app.infra.errors import NotFound
from app.service.security import VerifiedKey

T = TypeVar("T")


def get_tenant_row(session: Session, key: VerifiedKey, model: type[T], row_id: str, noun: str) -> T:
    """The tenant's row of `model` with this id, or NotFound."""
    row = session.get(model, row_id)
    if row is None or getattr(row, "tenant", None) != key.tenant:
        raise NotFound(f"{noun} {row_id} not found")
    return row
