"""Run configurations as plain dataclasses. No torch here: the API and the CLI validate options
with these without loading the ML stack."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from models.errors import ConfigError


def code_version() -> str:
    """The installed mtl-service version, for cards and `mtl --version` ("0+unknown" in a tree
    that was never installed). Here because this module imports no torch."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mtl-service")
    except PackageNotFoundError:
        return "0+unknown"

# name -> (meta-learner or None, fixed beta or None when the config's beta applies)
ALGORITHMS: dict[str, tuple[str | None, float | None]] = {
    "transfer": (None, 0.0),
    "protonet": ("protonet", 1.0),
    "reptile": ("reptile", 1.0),
    "maml": ("maml", 1.0),
    "fomaml": ("fomaml", 1.0),
    "mtl-reptile": ("reptile", None),
    "mtl-maml": ("maml", None),
    "mtl-fomaml": ("fomaml", None),
    "mtl-protonet": ("protonet", None),
}

Combine = Literal["paper", "authors"]
MetaSchedule = Literal["constant", "linear"]
TransferSchedule = Literal["constant", "cosine"]
TransferHead = Literal["zeros", "standard", "cosine"]
# Numeric precision of forward and backward passes (models.precision; kept torch-free here).
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


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
    protonet_lr: float = 1e-3  # Adam's step size for ProtoNet's direction (times outer_lr)
    # The meta step's multiplier over training: "linear" anneals it to 0, as published Reptile and
    # the authors' code do; without it a Reptile iteration with meta_batch 1 and outer_lr 1 is
    # plain sequential SGD on one task at a time. The authors' combination always uses it as eps_t.
    meta_schedule: MetaSchedule = "linear"
    # The supervised (transfer) half, as the standard recipes train it (Chen et al. 2019, Tian et
    # al. 2020): mixed-class mini-batches from all base images, SGD with momentum and weight decay,
    # cosine decay. transfer_batch 0, momentum 0, weight_decay 0, "constant" and a "zeros" head are
    # the authors' setting: one step on the sampled tasks' own images.
    transfer_batch: int = 0
    momentum: float = 0.0
    weight_decay: float = 0.0
    transfer_schedule: TransferSchedule = "constant"
    # The C_base-way transfer head: "zeros" (the authors: every class starts equal, so almost no
    # gradient reaches the backbone at first), "standard" (nn.Linear's init) or "cosine" (a cosine
    # classifier with a fixed scale, Chen et al.'s Baseline++).
    transfer_head: TransferHead = "zeros"
    cosine_scale: float = 10.0
    # Run a meta-batch's inner loops as one batched computation (torch.func.vmap) instead of a loop
    # over tasks: the same directions (tests: to 1e-5); batch-norm running statistics end as the
    # tasks' mean instead of the last task's. Full-batch inner steps only (inner_batch 0).
    vectorise_tasks: bool = False
    # The transfer step's batch-norm statistics come from this many equal parts of its batch
    # ("ghost batches", Hoffer et al. 2017), its gradient being the parts' gradients weighted by
    # their images. A run on several processes (models.distributed) gives each process its share
    # of the parts, so the result depends on this number, never on the process count. 1: one batch.
    transfer_ghost_batches: int = 1
    seed: int = 0
    # "bf16": the supervised step and ProtoNet's episodes under bf16 autocast where the hardware
    # has it (inner loops of Reptile, MAML and FOMAML, the weights and every update stay fp32);
    # "fp32" elsewhere, and for every run from before the option existed (`from_card`).
    # models.precision.
    precision: Precision = "fp32"
    # How many processes models.distributed spreads a run over (one GPU each, or CPU threads
    # divided). Results do not depend on it, so it takes no part in comparing configs: a run
    # resumes on another count.
    processes: int = field(default=1, compare=False)

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
        choices = {"meta_schedule": ("constant", "linear"), "transfer_schedule": ("constant", "cosine"),
                   "transfer_head": ("zeros", "standard", "cosine"), "precision": PRECISIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.vectorise_tasks and self.inner_batch > 0:
            raise ConfigError("vectorise_tasks needs full-batch inner steps (inner_batch 0)")
        if self.transfer_batch < 0:
            raise ConfigError(f"transfer_batch must be 0 (the tasks' images) or more, got {self.transfer_batch}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must not be negative, got {self.weight_decay}")
        if self.cosine_scale <= 0:
            raise ConfigError(f"cosine_scale must be positive, got {self.cosine_scale}")
        if self.processes < 1:
            raise ConfigError(f"processes must be at least 1, got {self.processes}")
        self._check_ghost_batches()

    def _check_ghost_batches(self) -> None:
        ghosts = self.transfer_ghost_batches
        if ghosts < 1:
            raise ConfigError(f"transfer_ghost_batches must be at least 1, got {ghosts}")
        if ghosts == 1:
            return
        if self.transfer_batch == 0 and self.combine == "authors":
            raise ConfigError("the authors' transfer step already takes one task at a time; "
                              "transfer_ghost_batches needs --transfer-batch or --combine paper")
        images = self.transfer_batch or self.meta_batch * self.ways * (self.shots + self.queries)
        if ghosts > images:
            raise ConfigError(f"transfer_ghost_batches ({ghosts}) is more than the transfer "
                              f"step's {images} images")

    @property
    def meta_learner(self) -> str | None:
        return ALGORITHMS[self.algorithm][0]

    @property
    def effective_beta(self) -> float:
        """beta in this config's combination. The fixed betas of ALGORITHMS are in the paper's
        convention (1 = the meta-learner alone); the authors' formula weights transfer by beta."""
        fixed = ALGORITHMS[self.algorithm][1]
        if fixed is None:
            return self.beta
        return 1.0 - fixed if self.combine == "authors" else fixed

    @property
    def meta_weight(self) -> float:
        """How much the meta-learner's direction counts (0: it is not computed at all)."""
        if self.meta_learner is None:
            return 0.0
        return 1.0 - self.effective_beta if self.combine == "authors" else self.effective_beta

    @property
    def transfer_weight(self) -> float:
        """How much the supervised direction counts (0: it is not computed at all)."""
        return self.effective_beta if self.combine == "authors" else 1.0 - self.effective_beta

    def meta_factor(self, iteration: int) -> float:
        """Multiplier of the meta step at 0-based `iteration` (the schedule)."""
        if self.meta_schedule == "linear":
            return 1.0 - iteration / self.iterations
        return 1.0

    def transfer_factor(self, iteration: int) -> float:
        """Multiplier of the transfer learning rate at 0-based `iteration` (the schedule)."""
        if self.transfer_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * iteration / self.iterations))
        return 1.0

    def passes_per_iteration(self) -> int:
        """Image forward+backward passes one iteration performs: the unit of an equal budget.

        MAML's second-order backward costs more time than a pass; it is counted as one pass per
        image all the same, and its extra cost shows in the speed benchmark instead.
        """
        per_task_all = self.ways * (self.shots + self.queries)
        learner = self.meta_learner
        meta_on = self.meta_weight > 0
        transfer_on = self.transfer_weight > 0
        passes = 0
        if meta_on and learner == "protonet":
            passes += self.meta_batch * per_task_all
        elif meta_on:
            if learner == "reptile":
                batch = per_task_all if self.inner_batch <= 0 else min(self.inner_batch, per_task_all)
                passes += self.meta_batch * self.inner_steps * batch
            else:
                support = self.ways * self.shots
                batch = support if self.inner_batch <= 0 else min(self.inner_batch, support)
                passes += self.meta_batch * (self.inner_steps * batch + self.ways * self.queries)
        if transfer_on:
            passes += self.transfer_batch if self.transfer_batch > 0 else self.meta_batch * per_task_all
        return passes

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_card(cls, hyperparameters: dict[str, Any]) -> PretrainConfig:
        """The config a checkpoint's card records; a card from before the precision option
        was trained in fp32, whatever today's default is."""
        return cls.from_dict({"precision": "fp32", **hyperparameters})



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
    # The prototype head's logits are ProtoNet's (-|f - c|^2 up to a per-image constant) divided
    # by the mean squared prototype norm, times this scale. Unscaled (|f|^2 of 60-180) they
    # saturate the softmax and fine-tuning from them lost 6-10 points on validation alphabets;
    # the scale leaves the 0-step prediction (ProtoNet's) unchanged.
    prototype_scale: float = 10.0
    # Steps beyond `steps` (those `min_epochs` adds) end once a batch's loss falls below this:
    # a many-shot support set is fitted long before its 20th epoch, and those epochs dominate
    # evaluation time. 0 disables it.
    stop_loss: float = 0.0
    # A random flip and shift of up to 4 pixels, drawn for each image of each fine-tuning step:
    # more distinct views of a handful of user images (chosen, or not, on validation classes).
    augment: bool = False

    def __post_init__(self) -> None:
        if self.bn_stats not in BN_STATS:
            raise ConfigError(f"bn_stats must be one of {', '.join(BN_STATS)}, got {self.bn_stats!r}")
        if self.head_init not in HEAD_INITS:
            raise ConfigError(f"head_init must be one of {', '.join(HEAD_INITS)}, got {self.head_init!r}")
        if not self.stop_loss >= 0:
            raise ConfigError(f"stop_loss must not be negative, got {self.stop_loss}")
        if not self.prototype_scale > 0:
            raise ConfigError(f"prototype_scale must be positive, got {self.prototype_scale}")
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
        return cls(**{k: base[k] for k in ("steps", "lr", "batch_size", "min_epochs", "head_init", "bn_stats",
                                             "prototype_scale", "stop_loss", "augment")
                      if k in base})


def check_head_init(head_init: str, num_classes: int, meta_ways: int | None) -> None:
    """ConfigError unless `head_init` can start a `num_classes`-way head: "meta" copies the base
    model's meta head, so it needs exactly as many classes as that head has (`meta_ways`)."""
    if head_init == "meta" and meta_ways != num_classes:
        raise ConfigError(f"head_init 'meta' needs exactly {meta_ways} classes (the base model's "
                          f"meta head); got {num_classes}")


def fit_steps(config: AdaptConfig, num_images: int, num_holdout: int) -> int:
    """SGD steps `fit_classifier` takes: a pass on the images outside the holdout (if there is
    one), then one on every image."""
    final = config.steps_for(num_images)
    return final + (config.steps_for(num_images - num_holdout) if num_holdout else 0)
