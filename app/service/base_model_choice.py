"""Choosing the base model for a classifier whose request named none: every ready base model the
caller may use is a candidate, the worker scores each on the dataset itself (a cheap proxy of the
classifier it would train) and trains from the best. The API only lists the candidates (it has
no torch); the worker scores them and records the outcome here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from app.infra.errors import InvalidInput, ServiceError
from app.infra.settings import Settings
from app.infra.tables import BaseModelRecord, ClassifierRecord, JobRecord
from app.service.base_models import base_model_dir, read_card
from app.service.holdout import training_steps
from app.service.jobs import ArtifactStatus
from app.service.schemas import ClassifierParams, resolve_params
from app.service.security import VerifiedKey
from models.config import check_head_init
from models.errors import ConfigError

# Scoring loads each candidate and a forward pass of its images: bounded by both numbers.
MAX_CANDIDATES = 8
PROXY_IMAGES_PER_CLASS = 40
RULE = (
    "score: leave-one-out accuracy of the 0-step prototype head (each image classified by the "
    "nearest class mean of the base model's features, its own class's mean without it) on at "
    f"most {PROXY_IMAGES_PER_CLASS} images a class of the dataset; the highest wins; a tie goes "
    "to the higher margin (the mean of (d_other - d_own) / (d_other + d_own), squared distances "
    "to the image's own class mean and to the nearest other), then to the earlier candidate (the "
    "default base model first, then the built-in ones, then the tenant's own, newest first)"
)


def candidates(session: Session, settings: Settings, key: VerifiedKey, *, num_classes: int,
               head_init: str | None) -> list[tuple[BaseModelRecord, dict[str, Any]]]:
    """The ready base models a classifier of this caller's may start from, in tie-break order,
    each with its card: the default, the built-in ones and the tenant's own (an admin's too: not
    every tenant's). Those that cannot serve the request (a meta head of another width for
    `head_init="meta"`) are left out; 422 when none is left."""
    rows = session.scalars(
        select(BaseModelRecord)
        .where(BaseModelRecord.status == ArtifactStatus.READY)
        .where(or_(BaseModelRecord.tenant.is_(None), BaseModelRecord.tenant == key.tenant,
                   BaseModelRecord.is_default.is_(True)))
        .order_by(BaseModelRecord.is_default.desc(), BaseModelRecord.tenant.is_not(None),
                  BaseModelRecord.created_at.desc(), BaseModelRecord.id)
        .limit(MAX_CANDIDATES)
    ).all()
    if not rows:
        raise ServiceError("there is no ready base model to train from", 409)
    out, reasons = [], []
    for row in rows:
        card = read_card(base_model_dir(settings, row.storage))
        try:
            check_head_init(head_init or "zeros", num_classes, card.get("meta_ways"))
        except ConfigError as exc:
            reasons.append(f"{row.id}: {exc}")
            continue
        out.append((row, card))
    if not out:
        raise InvalidInput("no ready base model can serve this request: " + "; ".join(reasons))
    return out


def pending(ids: list[str], requested: ClassifierParams) -> dict[str, Any]:
    """The choice as stored before the worker scores it; the request's own parameters are kept
    so the worker fills in the rest from the chosen base model's card."""
    return {"rule": RULE, "chosen": None,
            "candidates": [{"base_model_id": i, "score": None, "margin": None, "images": 0}
                           for i in ids],
            "requested_params": requested.model_dump(exclude_none=True)}


def public(choice: dict[str, Any] | None) -> dict[str, Any] | None:
    """The choice as callers see it (without the request's parameters kept for the worker)."""
    return None if choice is None else {k: v for k, v in choice.items() if k != "requested_params"}


def is_pending(choice: dict[str, Any] | None) -> bool:
    return choice is not None and choice.get("chosen") is None


def pick(choice: dict[str, Any], scores: dict[str, tuple[float | None, float | None, int]]
         ) -> dict[str, Any]:
    """The choice with each candidate's (score, margin, images), best first, and the winner (see
    RULE). A candidate that could not be scored (unavailable, or no class with two images)
    ranks below every score; when none could, the first candidate wins."""
    order = [c["base_model_id"] for c in choice["candidates"] if c["base_model_id"] in scores]
    ranked = sorted(order, key=lambda i: (scores[i][0] is None, -(scores[i][0] or 0.0),
                                          -(scores[i][1] or 0.0), order.index(i)))
    return {**choice, "chosen": ranked[0],
            "candidates": [{"base_model_id": i, "score": scores[i][0], "margin": scores[i][1],
                            "images": scores[i][2]} for i in ranked]}


def record_outcome(session: Session, settings: Settings, owned: ColumnElement[bool], job_id: str,
                   choice: dict[str, Any], class_counts: list[int]) -> bool:
    """The made `choice` onto the job (where `owned` still holds: False, and nothing written,
    where another attempt owns it now) and its classifier: the chosen base model, and the
    classifier's parameters filled in again from its card, the request's first as at creation.
    Raises ServiceError if the winner went away in the meantime."""
    row = session.get(BaseModelRecord, choice["chosen"])
    if row is None or row.status != ArtifactStatus.READY:
        raise ServiceError(f"base model {choice['chosen']} is no longer available", 409)
    card = read_card(base_model_dir(settings, row.storage))
    params = resolve_params(ClassifierParams(**choice.get("requested_params", {})),
                            card.get("adaptation") or {})
    chosen = {"base_model_id": row.id, "base_model_choice": choice}
    result = session.execute(update(JobRecord).where(owned).values(
        **chosen, total_steps=training_steps(params, class_counts)))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    job = session.get(JobRecord, job_id)
    assert job is not None and job.classifier_id
    session.execute(update(ClassifierRecord).where(ClassifierRecord.id == job.classifier_id)
                    .values(**chosen, params=params))
    return True
