"""Where base-model checkpoints live, registering the built-in ones at start-up, and finding the
base model a request may train a classifier from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, or_, select, true, update
from sqlalchemy.orm import Session

from app.infra.errors import NotFound, ServiceError
from app.infra.settings import Settings
from app.infra.tables import BaseModelRecord
from app.service.jobs import ArtifactStatus
from app.service.security import VerifiedKey

BUILTIN_PREFIX = "builtin/"
PREFERRED_DEFAULT = "natural"


def base_model_dir(settings: Settings, storage: str) -> Path:
    if storage.startswith(BUILTIN_PREFIX):
        return settings.resolved_builtin_dir / storage[len(BUILTIN_PREFIX) :]
    return settings.resolved_data_dir / storage


def visible_to(key: VerifiedKey) -> ColumnElement[bool]:
    """The base models `key` may see and train from: the built-in ones, its tenant's own, and
    the default (making a base model the default publishes it to every tenant, whose classifiers
    then start from it); admins see all."""
    if key.scope == "admin":
        return true()
    return or_(
        BaseModelRecord.tenant.is_(None),
        BaseModelRecord.tenant == key.tenant,
        BaseModelRecord.is_default.is_(True),
    )


def can_see(base: BaseModelRecord, key: VerifiedKey) -> bool:
    """`visible_to` for one loaded row."""
    return key.scope == "admin" or base.tenant in (None, key.tenant) or bool(base.is_default)


def read_card(directory: Path) -> dict[str, Any]:
    """The JSON card of a checkpoint (no torch needed)."""
    return dict(json.loads((directory / "model.json").read_text()))


def card_metrics(card: dict[str, Any]) -> dict[str, Any]:
    metrics = dict(card.get("metrics") or {})
    if "evaluation" in card and "evaluation" not in metrics:
        metrics["evaluation"] = card["evaluation"]
    return metrics


def register_builtin_models(*, session: Session, root: Path) -> list[str]:
    """Add a row for every checkpoint folder under `root` not yet registered; make the natural-image
    model (else the first) the default when there is none. Returns the ids added."""
    added = []
    folders = (
        sorted(p for p in root.glob("*") if (p / "model.json").exists()) if root.exists() else []
    )
    for folder in folders:
        if session.get(BaseModelRecord, folder.name) is not None:
            continue
        card = read_card(folder)
        session.add(
            BaseModelRecord(
                id=folder.name,
                name=folder.name,
                tenant=None,
                algorithm=str(card.get("algorithm")),
                image_size=int(card["image_size"]),
                channels=int(card["channels"]),
                status=ArtifactStatus.READY,
                storage=BUILTIN_PREFIX + folder.name,
                metrics=card_metrics(card),
            )
        )
        added.append(folder.name)
    session.flush()
    has_default = session.scalar(
        select(BaseModelRecord.id).where(BaseModelRecord.is_default.is_(True))
    )
    if has_default is None:
        ready = session.scalars(
            select(BaseModelRecord.id)
            .where(BaseModelRecord.status == ArtifactStatus.READY)
            .order_by(BaseModelRecord.created_at, BaseModelRecord.id)
        ).all()
        if ready:
            choice = PREFERRED_DEFAULT if PREFERRED_DEFAULT in ready else ready[0]
            set_default(session=session, base_model_id=choice)
    return added


def set_default(*, session: Session, base_model_id: str) -> None:
    session.execute(update(BaseModelRecord).values(is_default=BaseModelRecord.id == base_model_id))


def usable_base_model(
    *, session: Session, settings: Settings, key: VerifiedKey, base_model_id: str | None
) -> tuple[BaseModelRecord, dict[str, Any]]:
    """The ready base model a caller asked for (the default one for None) and its card: 404 when
    the caller cannot see it, 409 when it is not ready or there is no default."""
    if base_model_id is None:
        base = session.scalar(select(BaseModelRecord).where(BaseModelRecord.is_default.is_(True)))
        if base is None:
            raise ServiceError("there is no default base model; give 'base_model_id'", 409)
    else:
        base = session.get(BaseModelRecord, base_model_id)
        if base is None or not can_see(base, key):
            raise ServiceError(f"base model {base_model_id} not found; the ready ones: "
                               f"{', '.join(ready_ids(session, key)) or 'none'}", 404)
    if base.status != ArtifactStatus.READY:
        raise ServiceError(f"base model {base.id} is {base.status}, not ready", 409)
    return base, read_card(base_model_dir(settings, base.storage))


def ready_ids(session: Session, key: VerifiedKey) -> list[str]:
    """The ids of the ready base models the caller can use, for an error that lists them."""
    rows = session.scalars(select(BaseModelRecord).where(
        BaseModelRecord.status == ArtifactStatus.READY).order_by(BaseModelRecord.id))
    return [r.id for r in rows if can_see(r, key)]


def make_ready_default(*, session: Session, base_model_id: str) -> BaseModelRecord:
    """Make a ready base model the default (committed): NotFound, or 409 if it is not ready."""
    row = session.get(BaseModelRecord, base_model_id)
    if row is None:
        raise NotFound(f"base model {base_model_id} not found")
    if row.status != ArtifactStatus.READY:
        raise ServiceError(f"base model {base_model_id} is {row.status}, not ready", status=409)
    set_default(session=session, base_model_id=row.id)
    session.commit()
    session.refresh(row)
    return row
