"""Where base-model checkpoints live, and registering the built-in ones at start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.settings import Settings
from app.tables import BaseModel

BUILTIN_PREFIX = "builtin/"
PREFERRED_DEFAULT = "natural"


def base_model_dir(settings: Settings, storage: str) -> Path:
    if storage.startswith(BUILTIN_PREFIX):
        return settings.resolved_builtin_dir / storage[len(BUILTIN_PREFIX) :]
    return settings.resolved_data_dir / storage


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
        if session.get(BaseModel, folder.name) is not None:
            continue
        card = read_card(folder)
        session.add(
            BaseModel(
                id=folder.name,
                name=folder.name,
                tenant=None,
                algorithm=str(card.get("algorithm")),
                image_size=int(card["image_size"]),
                channels=int(card["channels"]),
                status="ready",
                storage=BUILTIN_PREFIX + folder.name,
                metrics=card_metrics(card),
            )
        )
        added.append(folder.name)
    session.flush()
    has_default = session.scalar(select(BaseModel.id).where(BaseModel.is_default.is_(True)))
    if has_default is None:
        ready = session.scalars(
            select(BaseModel.id)
            .where(BaseModel.status == "ready")
            .order_by(BaseModel.created_at, BaseModel.id)
        ).all()
        if ready:
            choice = PREFERRED_DEFAULT if PREFERRED_DEFAULT in ready else ready[0]
            set_default(session=session, base_model_id=choice)
    return added


def set_default(*, session: Session, base_model_id: str) -> None:
    session.execute(update(BaseModel).values(is_default=BaseModel.id == base_model_id))
