"""What the API says about base models: a card, with the few-shot accuracy it measured, and how
the service chose one for a classifier whose request named none. pydantic only."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from mtl_client.statuses import ArtifactStatus


class CardAccuracy(BaseModel):
    """One measured few-shot result: accuracy on classes the base model never saw."""

    ways: int
    shots: int
    episodes: int
    accuracy: float
    ci95: float | None


class BaseModelFields(BaseModel):
    """What the list of base models and a card both say of one."""

    id: str
    name: str
    algorithm: str
    image_size: int
    channels: int
    is_default: bool
    status: ArtifactStatus


class BaseModelCard(BaseModelFields):
    suits: str = Field(description="what kind of images this base model is meant for")
    pretrained_on: str | None = Field(description="the data it was pretrained on")
    training_seconds: float | None
    accuracy: list[CardAccuracy] = Field(
        description="few-shot accuracy measured on unseen classes (empty when not measured)"
    )
    adaptation: dict[str, Any] = Field(
        description="the fine-tuning settings its classifiers use unless a request says otherwise"
    )


class BaseModelCandidate(BaseModel):
    base_model_id: str
    score: float | None = Field(
        description="the proxy on this dataset (see `rule`), 0 to 1; null when no class has two "
        "images to score")
    margin: float | None = Field(
        description="the tie-break, -1 to 1: how much nearer each image is to its own class "
        "than to the nearest other, on average (see `rule`)")
    images: int = Field(description="images scored (at most 40 a class)")


class BaseModelChoice(BaseModel):
    """How a base model was chosen for a classifier whose request named none: every ready base
    model the caller may use was scored on the dataset itself, and the best trained it."""

    rule: str = Field(description="what `score` measures and how ties are broken")
    candidates: list[BaseModelCandidate] = Field(
        description="every candidate, best first once scored; before then, unscored")
    chosen: str | None = Field(description="the base model trained from; null until scored")
