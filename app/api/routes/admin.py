"""Admin: pretraining base models, choosing the default, managing API keys."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy import select

from app.api.deps import AdminKey, SessionDep, SettingsDep, rate_limited, verified_keys
from app.api.idempotency import IdempotencyKey
from app.api.responses import errors
from app.infra.tables import ApiKeyRecord, DatasetRecord
from app.service import jobs, keys
from app.service.base_models import make_ready_default
from app.service.pagination import DEFAULT_LIMIT, Cursor, Limit, paginate
from app.service.params import pretrain_config
from app.service.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    BaseModelPublic,
    Page,
    PretrainingJobCreate,
    PretrainingJobCreated,
)

router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=errors(401, 403, 422, 429))


@router.post(
    "/pretraining-jobs",
    status_code=202,
    response_model=PretrainingJobCreated,
    responses=errors(404, 409, 413),
    dependencies=[rate_limited("training")],
)
def create_pretraining_job(
    body: PretrainingJobCreate,
    session: SessionDep,
    key: AdminKey,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> PretrainingJobCreated:
    """Pretrain a base model.

    Starts a pretraining job (202) on a dataset of base classes (any tenant's) with one of
    the algorithms of `models.algorithms`; each parameter is bounded and an out-of-bounds value
    is a 422 naming it. The new base model is ready when the job succeeds. With an
    `Idempotency-Key`, a repeat within 24 h answers the first answer and starts nothing.
    """
    dataset = session.get(DatasetRecord, body.dataset_id)
    if dataset is None:
        raise HTTPException(404, f"dataset {body.dataset_id} not found")
    config = pretrain_config(
        body.algorithm,
        body.params,
        [c["count"] for c in dataset.classes],
        max_memory_bytes=settings.max_pretrain_memory_bytes,
    )
    job = jobs.create_pretraining_job(
        session=session,
        settings=settings,
        tenant=key.tenant,
        name=body.name,
        dataset=dataset,
        config=config,
        callback_url=None if body.callback_url is None else str(body.callback_url),
    )
    assert job.base_model_id is not None
    return PretrainingJobCreated(job_id=job.id, base_model_id=job.base_model_id)


@router.post(
    "/base-models/{base_model_id}/default",
    response_model=BaseModelPublic,
    responses=errors(404, 409),
)
def make_default(base_model_id: str, session: SessionDep, key: AdminKey) -> BaseModelPublic:
    """Set the default base model.

    The base model classifiers use when a request gives no `base_model_id`; it must be ready.
    """
    return BaseModelPublic.from_record(make_ready_default(session=session, base_model_id=base_model_id))


@router.post(
    "/api-keys", status_code=201, response_model=ApiKeyCreated, responses=errors(409, 413)
)
def create_key(
    body: ApiKeyCreate,
    session: SessionDep,
    key: AdminKey,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ApiKeyCreated:
    """Create an API key.

    The key itself is shown only in this answer; only its hash is stored. With an
    `Idempotency-Key`, a repeat within 24 h creates no other key and answers the first answer
    with `key` null (it is never stored).
    """
    plain, row = keys.create_key(session=session, tenant=body.tenant, admin=body.admin)
    response.headers["Cache-Control"] = "no-store"  # the key: no cache may keep it
    return ApiKeyCreated(key=plain, prefix=row.prefix, tenant=row.tenant, scope=row.scope)


@router.get("/api-keys", response_model=Page[ApiKeyPublic])
def list_keys(
    session: SessionDep, key: AdminKey, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
) -> Page[ApiKeyPublic]:
    """List API keys.

    Every tenant's keys in use (not revoked), oldest first, one page at a time: prefix, tenant
    and scope (the keys themselves are not stored, only their hashes).
    """
    rows, next_cursor = paginate(
        session,
        select(ApiKeyRecord).where(ApiKeyRecord.revoked_at.is_(None)),
        created_at=ApiKeyRecord.created_at,
        id=ApiKeyRecord.id,
        limit=limit,
        cursor=cursor,
    )
    return Page(data=[ApiKeyPublic.from_record(r) for r in rows], next_cursor=next_cursor)


@router.delete("/api-keys/{prefix}", status_code=204, responses=errors(404, 409))
def revoke_key(prefix: str, request: Request, session: SessionDep, key: AdminKey) -> Response:
    """Revoke an API key.

    By its prefix (the part after `mtl_`). It stops working at once on this API process, and
    within `MTL_API_KEY_CACHE_S` seconds (default 5) on any other API process sharing the database.
    A key cannot revoke itself (409): an admin would lock itself out by mistake.
    """
    keys.revoke_key(session=session, prefix=prefix, revoked_by=key.prefix)
    verified_keys(request).forget(prefix)
    return Response(status_code=204)
