"""Base models: the pretrained networks classifiers are fine-tuned from."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import or_, select

from app.api.responses import errors
from app.deps import CurrentKey, SessionDep
from app.schemas import BaseModelPublic
from app.tables import BaseModel

router = APIRouter(prefix="/v1/base-models", tags=["base models"], responses=errors(401, 422))


def to_public(row: BaseModel) -> BaseModelPublic:
    return BaseModelPublic.model_validate(
        {
            "id": row.id,
            "name": row.name,
            "algorithm": row.algorithm,
            "image_size": row.image_size,
            "channels": row.channels,
            "is_default": row.is_default,
            "status": row.status,
            "metrics": row.metrics or {},
        }
    )


@router.get("", response_model=list[BaseModelPublic])
def list_base_models(session: SessionDep, key: CurrentKey) -> list[BaseModelPublic]:
    """Built-in base models, and those pretrained by the caller's tenant (admins see all)."""
    query = select(BaseModel).order_by(BaseModel.created_at, BaseModel.id)
    if key.scope != "admin":
        query = query.where(or_(BaseModel.tenant.is_(None), BaseModel.tenant == key.tenant))
    return [to_public(r) for r in session.scalars(query).all()]
