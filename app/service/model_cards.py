"""A base model's card as a user choosing one needs it: what it suits, what it was pretrained on,
and the few-shot accuracy measured on classes it never saw (read from its model.json)."""

from __future__ import annotations

from typing import Any

from app.infra.tables import BaseModelRecord
from app.service.jobs import ArtifactStatus
from app.service.schemas import BaseModelCard, CardAccuracy

# The built-in models' cards record how they were trained, not who they are for; that is said here.
BUILTIN_SUITS = {
    "handwriting": "handwritten characters, glyphs, symbols and other dark-on-light line "
    "drawings (read as grayscale, resized to 28×28)",
    "natural": "photographs of objects, animals and scenes (colour, resized to 84×84)",
}


def suits(row: BaseModelRecord, card: dict[str, Any]) -> str:
    if card.get("description"):
        return str(card["description"])
    if row.storage.startswith("builtin/") and row.id in BUILTIN_SUITS:
        return BUILTIN_SUITS[row.id]
    colour = "grayscale" if row.channels == 1 else "colour"
    return f"images like those it was pretrained on ({colour}, resized to {row.image_size}×{row.image_size})"


def pretrained_on(card: dict[str, Any]) -> str | None:
    data = card.get("data") or {}
    if not data:
        return None
    source = str(data.get("source", "")).split("/shared/data/")[-1]
    return (
        f"{data.get('num_classes', '?')} classes, {data.get('num_images', '?')} images ({source})"
    )


def accuracies(metrics: dict[str, Any]) -> list[CardAccuracy]:
    """Every recorded few-shot result (`mtl evaluate --record NAME` stores them as
    metrics[NAME]["results"]), fewest ways and shots first."""
    out = []
    for record in metrics.values():
        if not isinstance(record, dict):
            continue
        for r in record.get("results") or []:
            if isinstance(r, dict) and {"ways", "shots", "accuracy"} <= r.keys():
                out.append(
                    CardAccuracy(
                        ways=int(r["ways"]),
                        shots=int(r["shots"]),
                        episodes=int(r.get("episodes", 0)),
                        accuracy=float(r["accuracy"]),
                        ci95=None if r.get("ci95") is None else float(r["ci95"]),
                    )
                )
    return sorted(out, key=lambda a: (a.ways, a.shots))


def base_model_card(row: BaseModelRecord, card: dict[str, Any]) -> BaseModelCard:
    """`card` is the model.json (empty while the model is still being pretrained)."""
    training = card.get("training") or {}
    seconds = training.get("seconds") if isinstance(training, dict) else None
    return BaseModelCard(
        id=row.id,
        name=row.name,
        algorithm=row.algorithm,
        image_size=row.image_size,
        channels=row.channels,
        is_default=row.is_default,
        status=ArtifactStatus(row.status),
        suits=suits(row, card),
        pretrained_on=pretrained_on(card),
        training_seconds=None if seconds is None else float(seconds),
        accuracy=accuracies({**(card.get("metrics") or {}), **(row.metrics or {})}),
        adaptation=dict(card.get("adaptation") or {}),
    )
