"""Base models: the pretrained networks classifiers are fine-tuned from."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlalchemy import select

from app.api.deps import CurrentKey, SessionDep, SettingsDep
from app.api.responses import errors
from app.infra.tables import BaseModelRecord
from app.service.base_models import base_model_dir, can_see, read_card, visible_to
from app.service.model_cards import base_model_card
from app.service.pagination import DEFAULT_LIMIT, Cursor, Limit, paginate
from app.service.schemas import BaseModelCard, BaseModelPublic, Page

router = APIRouter(prefix="/v1/base-models", tags=["base models"], responses=errors(401, 422, 429))


@router.get("", response_model=Page[BaseModelPublic])
def list_base_models(
    session: SessionDep, key: CurrentKey, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
) -> Page[BaseModelPublic]:
    """List base models.

    Built-in base models, those pretrained by the caller's tenant, and the default (admins see
    all), oldest first, one page at a time.
    """
    rows, next_cursor = paginate(
        session,
        select(BaseModelRecord).where(visible_to(key)),
        created_at=BaseModelRecord.created_at,
        id=BaseModelRecord.id,
        limit=limit,
        cursor=cursor,
    )
    return Page(data=[BaseModelPublic.from_record(r) for r in rows], next_cursor=next_cursor)


@router.get("/{base_model_id}/card", response_model=BaseModelCard, responses=errors(404))
def read_base_model_card(
    base_model_id: str, session: SessionDep, key: CurrentKey, settings: SettingsDep
) -> BaseModelCard:
    """A base model's card.

    What to choose it for, what it was pretrained on, and its few-shot accuracy measured on
    classes it never saw, as recorded in its checkpoint's card.
    """
    row = session.get(BaseModelRecord, base_model_id)
    if row is None or not can_see(row, key):
        raise HTTPException(404, f"base model {base_model_id} not found")
    try:
        card = read_card(base_model_dir(settings, row.storage))
    except (OSError, ValueError):
        card = {}  # still being pretrained: no checkpoint yet
    return base_model_card(row, card)
