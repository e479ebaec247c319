"""Dependencies the routes take: settings, a database session, the caller's API key.

Dependencies that do no I/O are `async def`, so FastAPI calls them on the event loop: a plain
`def` dependency costs a hand-over to the thread pool and back, which on a busy 2-core machine
was most of a small request's time (issue 13)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.limits import RateLimits
from app.infra.db import session_factory
from app.infra.settings import Settings, database_url
from app.service.predict import PredictService
from app.service.security import KeyRevoked, VerifiedKey, VerifiedKeyCache, hash_key, lookup_key


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def get_db(settings: SettingsDep) -> AsyncIterator[Session]:
    # Making a session does no I/O (it connects on first use); closing one that did returns its
    # connection (a rollback), so that happens in the thread pool, as the route's queries do.
    session = session_factory(database_url(settings))()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_db)]

_bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer mtl_...`")
# The raw credentials, for a route that must check the key without holding a session open
# (a server-sent event stream).
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def verified_keys(request: Request) -> VerifiedKeyCache:
    cache: VerifiedKeyCache = request.app.state.verified_keys
    return cache


async def get_current_key(
    request: Request, settings: SettingsDep, credentials: BearerCredentials
) -> VerifiedKey:
    """The caller's key: from the cache of recently verified keys (on the event loop), else from
    the database (in the thread pool, with a short session of its own)."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise HTTPException(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    cache = verified_keys(request)
    digest = hash_key(credentials.credentials)
    key = cache.get(digest)
    if key is None:
        # Guessing keys costs a database lookup each: an address that keeps failing waits.
        address = request.client.host if request.client else "unknown"
        limits: RateLimits = request.app.state.rate_limits
        await run_in_threadpool(limits.check_auth, address)  # Redis when distributed
        try:
            key = await run_in_threadpool(
                lookup_key, database_url=database_url(settings), digest=digest
            )
        except KeyRevoked as exc:
            await run_in_threadpool(limits.auth_failed, address)
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
        if key is None:
            await run_in_threadpool(limits.auth_failed, address)
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        cache.put(digest, key)
    request.state.tenant = key.tenant  # for the request's log line (app.api.middleware)
    return key


CurrentKey = Annotated[VerifiedKey, Depends(get_current_key)]


def rate_limited(kind: str) -> Any:
    """A route dependency: one more `kind` request (uploads, training, exports) of the caller's
    tenant, or 429 with Retry-After (app.api.limits)."""
    async def hit(request: Request, key: CurrentKey) -> None:
        limits: RateLimits = request.app.state.rate_limits
        await run_in_threadpool(limits.hit, kind, key.tenant)

    return Depends(hit)


async def get_admin_key(key: CurrentKey) -> VerifiedKey:
    if key.scope != "admin":
        raise HTTPException(403, "this route needs an admin key")
    return key


AdminKey = Annotated[VerifiedKey, Depends(get_admin_key)]


async def get_predict_service(request: Request) -> PredictService:
    service: PredictService = request.app.state.predict_service
    return service


PredictServiceDep = Annotated[PredictService, Depends(get_predict_service)]


T = TypeVar("T")
R = TypeVar("R")


async def quick_read(settings: Settings, read: Callable[..., R], *args: Any) -> R:
    """Run a small read (`read(*args)`, which opens its own short session): on the event loop for
    the embedded SQLite (a local file in WAL mode, where a reader never waits for a writer, and a
    primary-key read takes less time than handing work to a thread and back), in the thread pool
    for a database over the network."""
    if database_url(settings).startswith("sqlite"):
        return read(*args)
    return await run_in_threadpool(read, *args)
