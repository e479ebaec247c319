"""Job parameters: bounds on every pretraining parameter the API accepts, checked before a job is
created, and a classifier's stored adaptation parameters turned into `AdaptConfig`.

`models.config.PretrainConfig` is the ML core's own description of a run and grows new fields;
the service bounds each of them here, by name, so that nothing reaches a worker unbounded:
numbers by `PRETRAIN_BOUNDS` (a missing entry fails `tests/service/test_bounds.py`), `Literal`
fields by the values their type allows, booleans by type. On top of the per-field bounds, the
memory a run needs is estimated and capped (`MTL_MAX_PRETRAIN_MEMORY_BYTES`), since the product
of several in-bounds fields can still be far too large.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, fields
from functools import cache
from typing import Any

from app.infra.errors import InvalidInput
from models.config import AdaptConfig  # torch-free


@dataclass(frozen=True)
class Range:
    """low <= value <= high; `integer`: a JSON integer, else any finite number."""

    low: float
    high: float
    integer: bool = True

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool):
            return "must be a number, not a boolean"
        if self.integer and not isinstance(value, int):
            return f"must be an integer, got {value!r}"
        if not isinstance(value, int | float):
            return f"must be a number, got {value!r}"
        if not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        if not self.low <= value <= self.high:
            return f"must be between {self.low:g} and {self.high:g}, got {value!r}"
        return None


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or value not in self.values:
            return f"must be one of {', '.join(map(repr, self.values))}, got {value!r}"
        return None


@dataclass(frozen=True)
class Flag:
    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"


Bound = Range | Choice | Flag

# Every numeric or free-text PretrainConfig field, by name. Upper bounds are what a single
# worker can run; lower bounds what the training code is defined for.
PRETRAIN_BOUNDS: dict[str, Bound] = {
    "backbone": Choice(("conv4", "resnet12")),  # models.backbones (tested to match)
    "filters": Range(1, 512),
    "image_size": Range(8, 224),
    "channels": Choice((1, 3)),
    "ways": Range(2, 100),
    "shots": Range(1, 100),
    "queries": Range(0, 100),
    "meta_batch": Range(1, 64),
    "inner_steps": Range(1, 100),
    "inner_batch": Range(0, 10_000),  # 0: every image of the task
    "inner_lr": Range(0, 10, integer=False),
    "outer_lr": Range(0, 10, integer=False),
    "transfer_lr": Range(0, 10, integer=False),
    "beta": Range(0, 1, integer=False),
    "iterations": Range(1, 1_000_000),
    "protonet_lr": Range(0, 1, integer=False),
    "seed": Range(0, 2**31 - 1),
    "transfer_batch": Range(0, 4096),  # 0: the sampled tasks' own images
    "momentum": Range(0, 0.999, integer=False),
    "weight_decay": Range(0, 1, integer=False),
    "cosine_scale": Range(1e-3, 1000, integer=False),
    "transfer_ghost_batches": Range(1, 4096),  # parts of the transfer batch (models.distributed)
    # Processes the worker spreads the run over: one GPU each (a worker with fewer GPUs fails
    # the job saying so), or CPU processes dividing the worker's threads. A node has at most 16.
    "processes": Range(1, 16),
}


@cache
def pretrain_bounds() -> dict[str, Bound]:
    """The bound of every PretrainConfig field except `algorithm` (checked on its own); a field
    with neither a table entry nor a Literal or bool type is missing (KeyError names it)."""
    from models.config import PretrainConfig

    hints = typing.get_type_hints(PretrainConfig)
    out: dict[str, Bound] = {}
    for f in fields(PretrainConfig):
        if f.name == "algorithm":
            continue
        hint = hints[f.name]
        if f.name in PRETRAIN_BOUNDS:
            out[f.name] = PRETRAIN_BOUNDS[f.name]
        elif typing.get_origin(hint) is typing.Literal:
            out[f.name] = Choice(typing.get_args(hint))
        elif hint is bool:
            out[f.name] = Flag()
        else:
            raise KeyError(f"PretrainConfig.{f.name} has no bound in app.service.params.PRETRAIN_BOUNDS")
    return out


def estimated_memory_bytes(config: Any, num_images: int) -> int:
    """A deliberately generous estimate of a pretraining run's peak memory: the dataset decoded
    (uint8 and float32), and the activations kept for the backward pass of one iteration (each
    image costs about `width x image_size^2` floats a layer; MAML keeps every inner step's)."""
    pixels = config.image_size**2
    dataset = num_images * config.channels * pixels * (1 + 4)
    width = config.filters * (6 if config.backbone == "conv4" else 40)
    per_image = width * pixels * 4
    task_images = config.ways * (config.shots + config.queries)
    graphs = config.inner_steps + 1 if config.meta_learner == "maml" else 1
    batch = max(task_images * graphs, getattr(config, "transfer_batch", 0))
    return int(dataset + per_image * batch)


def pretrain_config(
    algorithm: str, params: dict[str, Any], class_counts: list[int], *, max_memory_bytes: int
) -> Any:
    """The `PretrainConfig` of a request, every parameter within its bounds and the run within
    the memory cap and the dataset's shape; else InvalidInput naming the parameter."""
    from models.config import ALGORITHMS, PretrainConfig

    if algorithm not in ALGORITHMS:
        raise InvalidInput(f"unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")
    bounds = pretrain_bounds()
    unknown = sorted(set(params) - set(bounds))
    if unknown:
        raise InvalidInput(
            f"unknown pretraining parameter(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(bounds))}"
        )
    for name, value in params.items():
        problem = bounds[name].problem(value)
        if problem is not None:
            raise InvalidInput(f"params.{name} {problem}")
    config = PretrainConfig(**{**params, "algorithm": algorithm})  # ConfigError: 422
    if not config.replacement and config.ways > len(class_counts):
        raise InvalidInput(
            f"{config.ways}-way episodes need {config.ways} classes; the "
            f"dataset has {len(class_counts)} (lower params.ways)"
        )
    need = config.shots + config.queries
    if need > min(class_counts):
        raise InvalidInput(
            f"shots + queries = {need} images per class, but the smallest "
            f"class of the dataset has {min(class_counts)}"
        )
    memory = estimated_memory_bytes(config, sum(class_counts))
    if memory > max_memory_bytes:
        raise InvalidInput(
            f"this run would need about {memory / 2**30:.1f} GiB, over the limit of "
            f"{max_memory_bytes / 2**30:.1f} GiB (MTL_MAX_PRETRAIN_MEMORY_BYTES); lower "
            "params.image_size, params.filters, params.ways, params.shots, params.queries "
            "or params.transfer_batch"
        )
    return config


# ----------------------------------------------------------------------------- adaptation

# API parameter name -> `AdaptConfig` field, for every adaptation setting: the API says
# `learning_rate` where the model code says `lr`.
ADAPT_FIELDS = {
    ("learning_rate" if f.name == "lr" else f.name): f.name for f in fields(AdaptConfig)
}
# Stored by jobs queued before these settings existed; their behaviour then, not today's default.
_LEGACY_ADAPT_PARAMS: dict[str, Any] = {"min_epochs": 0.0, "bn_stats": "frozen"}


def classifier_defaults() -> dict[str, Any]:
    """Used when neither the request nor the base model's card says otherwise: the defaults of
    `models.config.AdaptConfig`, chosen by measurement (see docs/service.md)."""
    d = AdaptConfig()
    return {api: getattr(d, name) for api, name in ADAPT_FIELDS.items()}


def adapt_config(params: dict[str, Any]) -> AdaptConfig:
    """The `AdaptConfig` of a classifier's resolved parameters (as stored with its job)."""
    values = {**_LEGACY_ADAPT_PARAMS, **{k: v for k, v in params.items() if v is not None}}
    # A setting added to the ML core after the job was stored takes its default.
    return AdaptConfig(**{name: values[api] for api, name in ADAPT_FIELDS.items() if api in values})
