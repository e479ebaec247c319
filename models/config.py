"""Run configurations as plain dataclasses. No torch here: the API and the CLI validate options
with these without loading the ML stack."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

from models.errors import ConfigError

# name -> (meta-learner or None, fixed beta or None when the config's beta applies)
ALGORITHMS: dict[str, tuple[str | None, float | None]] = {
    "transfer": (None, 0.0),
    "protonet": ("protonet", None),
    "reptile": ("reptile", 1.0),
    "maml": ("maml", 1.0),
    "fomaml": ("fomaml", 1.0),
    "mtl-reptile": ("reptile", None),
    "mtl-maml": ("maml", None),
    "mtl-fomaml": ("fomaml", None),
}

Combine = Literal["paper", "authors"]


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run; stored whole in the checkpoint card."""

    algorithm: str = "mtl-reptile"
    backbone: str = "conv4"
    filters: int = 64
    image_size: int = 28
    channels: int = 1
    ways: int = 5
    shots: int = 5  # images per class for the inner loop (MAML's support)
    queries: int = 5  # more images per class: MAML's query set; Reptile trains on them too
    # meta_batch 1 with these rates beat meta_batch 5 at the same number of image passes on held-out
    # Omniglot alphabets (benchmarks/results/tuning-omniglot.jsonl): more, smaller steps.
    meta_batch: int = 1
    inner_steps: int = 5
    inner_batch: int = 0  # 0: all of a task's images in every inner step
    inner_lr: float = 0.1
    outer_lr: float = 1.0
    transfer_lr: float = 0.2
    beta: float = 0.5
    combine: Combine = "paper"
    iterations: int = 1000
    replacement: bool = False
    augment: bool = False
    protonet_lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(
                f"unknown algorithm {self.algorithm!r}; known algorithms: {', '.join(ALGORITHMS)}"
            )
        if self.combine not in ("paper", "authors"):
            raise ConfigError(f"combine must be 'paper' or 'authors', got {self.combine!r}")
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"beta must be in [0, 1], got {self.beta}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        for name in ("iterations", "ways", "shots", "meta_batch", "image_size", "filters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.ways < 2:
            raise ConfigError(f"ways must be at least 2, got {self.ways}")
        if self.meta_learner in ("maml", "fomaml", "protonet") and self.queries < 1:
            raise ConfigError(f"{self.algorithm} needs at least 1 query image per class")

    @property
    def meta_learner(self) -> str | None:
        return ALGORITHMS[self.algorithm][0]

    @property
    def effective_beta(self) -> float:
        fixed = ALGORITHMS[self.algorithm][1]
        return self.beta if fixed is None else fixed

    def passes_per_iteration(self) -> int:
        """Image forward+backward passes one iteration performs: the unit of an equal budget.

        MAML's second-order backward costs more time than a pass; it is counted as one pass per
        image all the same, and its extra cost shows in the speed benchmark instead.
        """
        per_task_all = self.ways * (self.shots + self.queries)
        learner, beta = self.meta_learner, self.effective_beta
        authors = self.combine == "authors"
        meta_on = learner not in (None, "protonet") and ((1 - beta) if authors else beta) > 0
        transfer_on = learner != "protonet" and (beta if authors else (1 - beta)) > 0
        passes = 0
        if learner == "protonet":
            passes += self.meta_batch * per_task_all
        if meta_on:
            if learner == "reptile":
                batch = per_task_all if self.inner_batch <= 0 else min(self.inner_batch, per_task_all)
                passes += self.meta_batch * self.inner_steps * batch
            else:
                support = self.ways * self.shots
                batch = support if self.inner_batch <= 0 else min(self.inner_batch, support)
                passes += self.meta_batch * (self.inner_steps * batch + self.ways * self.queries)
        if transfer_on:
            passes += self.meta_batch * per_task_all
        return passes

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})



HeadInit = Literal["zeros", "prototype", "meta"]
HEAD_INITS = ("zeros", "prototype", "meta")
BNStats = Literal["frozen", "support"]
BN_STATS = ("frozen", "support")


@dataclass
class AdaptConfig:
    # Defaults measured on held-out Omniglot background alphabets (benchmarks/results/tuning-*.jsonl):
    # zeros + re-estimated statistics + lr 0.1 beat prototype heads and frozen statistics.
    steps: int = 30
    lr: float = 0.1
    batch_size: int = 0  # 0: every labelled image in each step
    # With batches smaller than the labelled set, `steps` alone under-trains many-shot tasks
    # (20-way 15-shot on validation alphabets: 83.3% at 30 steps of 64 images, 93.7% with
    # min_epochs 20; benchmarks/results/tuning-omniglot-min-epochs.jsonl), so the step count
    # grows until every image has been seen this many times (see `steps_for`).
    min_epochs: float = 0.0
    head_init: HeadInit = "zeros"
    # "support": batch-norm statistics are re-estimated from the support batches while
    # fine-tuning (then frozen for prediction); "frozen": the base model's statistics are kept.
    bn_stats: BNStats = "support"

    def __post_init__(self) -> None:
        if self.bn_stats not in BN_STATS:
            raise ConfigError(f"bn_stats must be one of {', '.join(BN_STATS)}, got {self.bn_stats!r}")
        if self.head_init not in HEAD_INITS:
            raise ConfigError(f"head_init must be one of {', '.join(HEAD_INITS)}, got {self.head_init!r}")
        if self.steps < 0 or self.lr < 0 or self.batch_size < 0 or self.min_epochs < 0:
            raise ConfigError("adaptation steps, lr, batch size and min_epochs must not be negative")

    def steps_for(self, num_images: int) -> int:
        """SGD steps to take on `num_images` labelled images: `steps`, or more where that would
        show each image fewer than `min_epochs` times."""
        if self.steps == 0 or num_images <= 0:
            return self.steps
        batch = num_images if self.batch_size <= 0 else min(self.batch_size, num_images)
        return max(self.steps, math.ceil(self.min_epochs * num_images / batch))

    @classmethod
    def from_card(cls, card: dict[str, Any], **overrides: Any) -> AdaptConfig:
        base = dict(card.get("adaptation", {}))
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{k: base[k] for k in ("steps", "lr", "batch_size", "min_epochs", "head_init", "bn_stats")
                      if k in base})


