"""Dependencies the routes take: settings, a database session, the caller's API key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.db import session_factory
from app.predict import PredictService
from app.security import find_key
from app.settings import Settings
from app.tables import ApiKeyRecord


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_db(settings: SettingsDep) -> Iterator[Session]:
    session = session_factory(settings.resolved_database_url)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_db)]

_bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer mtl_...`")
# The raw credentials, for a route that must check the key without holding a session open
# (a server-sent event stream).
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_current_key(session: SessionDep, credentials: BearerCredentials) -> ApiKeyRecord:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise HTTPException(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = find_key(session=session, key=credentials.credentials)
    if key is None:
        raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
    return key


CurrentKey = Annotated[ApiKeyRecord, Depends(get_current_key)]


def get_admin_key(key: CurrentKey) -> ApiKeyRecord:
    if key.scope != "admin":
        raise HTTPException(403, "this route needs an admin key")
    return key


AdminKey = Annotated[ApiKeyRecord, Depends(get_admin_key)]


def get_predict_service(request: Request) -> PredictService:
    service: PredictService = request.app.state.predict_service
    return service


PredictServiceDep = Annotated[PredictService, Depends(get_predict_service)]


T = TypeVar("T")


def get_tenant_row(
    session: Session, key: ApiKeyRecord, model: type[T], row_id: str, noun: str
) -> T:
    """The tenant's row of `model` with this id; another tenant's row is answered like a missing one."""
    row = session.get(model, row_id)
    if row is None or getattr(row, "tenant", None) != key.tenant:
        raise HTTPException(404, f"{noun} {row_id} not found")
    return row
