"""Pretraining: one loop for every algorithm. What varies (progress reporting, cancellation,
checkpointing, the deadline) is passed in, so the CLI, a test and a Celery task run it the same."""

from __future__ import annotations

import os
import platform
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from models import algorithms as alg
from models.checkpoint import load_checkpoint, save_base_model
from models.config import AdaptConfig, PretrainConfig
from models.data import ImageSet, augment_images, to_float
from models.episodes import EpisodeSampler
from models.errors import CheckpointError, ConfigError, TrainingCancelled
from models.network import MetaNet, build_metanet
from models.precision import autocast, effective_precision, full_precision


@dataclass
class Progress:
    iteration: int
    total: int
    loss: float
    seconds: float


@dataclass
class PretrainResult:
    net: MetaNet
    card: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def machine_description(device: torch.device) -> str:
    """What a run was measured on, for its card: CPU, cores, torch threads, GPU."""
    desc = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    if device.type == "cuda":
        desc += f", {torch.cuda.get_device_name(device)}"
    return desc


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present. Called inside jobs, never at import, so forked workers
    never inherit a CUDA context."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None


def channel_stats(data: ImageSet, max_images: int = 5000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training images (a seeded sample of at most max_images)."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data), generator=g)[:max_images]
    x = to_float(data.images[idx])
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


T = TypeVar("T")


class Sync:
    """How one process's share of an iteration joins the other processes'. This base class is a
    run on one process, where every hook does nothing; `models.distributed` overrides them, so
    the training loop is the same code on one process or many."""

    rank = 0
    world = 1

    def part(self, items: Sequence[T]) -> Sequence[T]:
        """This process's share of a meta-batch's tasks or of the transfer step's parts."""
        return items

    def mean(self, tensors: alg.Params, loss: float, weight: float) -> tuple[alg.Params, float]:
        """The mean over processes of their `tensors` and `loss`, each weighted by `weight`
        (the tasks or images it computed them on)."""
        return tensors, loss

    @contextmanager
    def random_stream(self, rng: np.random.Generator, tasks: Sequence[alg.Task],
                      config: PretrainConfig) -> Iterator[None]:
        """Around the meta-learner's half: `rng` (mini-batched inner loops draw from it, task
        after task) ends where one process running every task leaves it."""
        yield

    @contextmanager
    def batchnorm(self, net: MetaNet, *, mean_over: int | None = None) -> Iterator[None]:
        """Around one half of a step: afterwards every process holds the batch-norm running
        statistics one process would have. Forward passes update them one after another, except
        in the vectorised meta-batch, which keeps the mean of its `mean_over` tasks' statistics."""
        yield


def sample_tasks(
    data: ImageSet, sampler: EpisodeSampler, config: PretrainConfig, device: torch.device,
    gen: torch.Generator,
) -> list[alg.Task]:
    """One meta-batch of tasks on `device`: the images every algorithm's iteration trains on."""
    tasks = []
    for _ in range(config.meta_batch):
        ep = sampler.sample()
        idx = ep.all_indices
        x = to_float(data.images[idx.to(data.images.device)].to(device))
        if config.augment:
            x = augment_images(x, gen)
        ns = len(ep.support)
        tasks.append(
            alg.Task(
                support_x=x[:ns],
                support_y=ep.support_labels.to(device),
                query_x=x[ns:],
                query_y=ep.query_labels.to(device),
                base_y=data.labels[idx].to(device),
            )
        )
    return tasks


def train_step(
    net: MetaNet,
    tasks: list[alg.Task],
    config: PretrainConfig,
    *,
    iteration: int,
    rng: np.random.Generator,
    state: dict[str, torch.Tensor] | None = None,
    transfer_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    sync: Sync | None = None,
) -> float:
    """One meta-transfer iteration on a meta-batch of tasks; updates `net` in place, returns a loss.

    `state` holds what persists between iterations (SGD momentum, Adam moments; updated in
    place); `transfer_batch` is a mixed-class (images, base labels) batch for the supervised
    direction, which otherwise trains on the tasks' own images. With `sync` (several processes),
    each computes its share of the tasks and of the transfer parts, and all apply the mean.
    """
    state = {} if state is None else state
    sync = Sync() if sync is None else sync
    theta = alg.current_params(net)
    # Only the two directions' forward and backward passes run under autocast: the parameter
    # arithmetic after them (Adam, momentum, the combination) stays fp32.
    with autocast(config.precision, next(iter(theta.values())).device):
        meta, transfer, losses = _directions(net, theta, tasks, config, rng, state, transfer_batch,
                                             sync, iteration)
    beta = config.effective_beta
    meta_step = config.outer_lr * config.meta_factor(iteration)
    if config.combine == "authors":
        new = alg.combine_authors(theta, meta, transfer, beta=beta, epsilon=meta_step)
    else:
        new = alg.combine_paper(theta, meta, transfer, beta=beta, outer_lr=meta_step)
    alg.assign_params(net, new)
    return float(np.mean(losses)) if losses else float("nan")


def _directions(
    net: MetaNet, theta: alg.Params, tasks: list[alg.Task], config: PretrainConfig,
    rng: np.random.Generator, state: dict[str, torch.Tensor],
    transfer_batch: tuple[torch.Tensor, torch.Tensor] | None, sync: Sync, iteration: int,
) -> tuple[alg.Params, alg.Params, list[float]]:
    """The meta-learner's and the supervised directions from `theta` (each empty when its weight
    is 0) and their losses."""
    learner = config.meta_learner
    # A weight of zero means the direction is not needed: skip its compute entirely.
    meta: alg.Params = {}
    transfer: alg.Params = {}
    losses: list[float] = []
    if config.meta_weight > 0:
        mine = sync.part(tasks)
        vectorised = config.vectorise_tasks and learner != "protonet"
        with sync.batchnorm(net, mean_over=len(mine) if vectorised else None), \
                sync.random_stream(rng, tasks, config):
            meta, loss = _meta_direction(net, theta, list(mine), config, rng)
        # ProtoNet's moments must see the mean gradient, so Adam runs after the mean.
        meta, loss = sync.mean(meta, loss, weight=len(mine))
        if learner == "protonet":
            meta = alg.adam_direction(meta, state, lr=config.protonet_lr)
        losses.append(loss)
    if config.transfer_weight > 0:
        parts = sync.part(transfer_parts(tasks, config, transfer_batch))
        with sync.batchnorm(net):
            grads, loss = _transfer_gradient(net, theta, parts)
        grads, loss = sync.mean(grads, loss, weight=sum(len(y) for _, y in parts))
        transfer = alg.sgd_direction(
            theta, grads, state, lr=config.transfer_lr * config.transfer_factor(iteration),
            momentum=config.momentum, weight_decay=config.weight_decay)
        losses.append(loss)
    return meta, transfer, losses


def _meta_direction(
    net: MetaNet, theta: alg.Params, tasks: list[alg.Task], config: PretrainConfig,
    rng: np.random.Generator,
) -> tuple[alg.Params, float]:
    """The meta-learner's direction on `tasks` (ProtoNet: its gradient, Adam comes after); zeros
    for a process given no task."""
    learner = config.meta_learner
    if not tasks:
        names = alg.backbone_param_names(net) if learner == "protonet" else alg.meta_param_names(net)
        return {k: torch.zeros_like(theta[k]) for k in names}, 0.0
    if learner == "protonet":
        return alg.protonet_gradient(net, theta, tasks)
    with full_precision(next(iter(theta.values())).device):
        return _inner_loop_direction(net, theta, tasks, config, rng)


def _inner_loop_direction(
    net: MetaNet, theta: alg.Params, tasks: list[alg.Task], config: PretrainConfig,
    rng: np.random.Generator,
) -> tuple[alg.Params, float]:
    """Reptile's, MAML's or FOMAML's direction: k SGD steps on each task's meta head."""
    learner = config.meta_learner
    if config.vectorise_tasks and learner == "reptile":
        return alg.reptile_direction_vectorised(
            net, theta, tasks, inner_steps=config.inner_steps, inner_lr=config.inner_lr)
    if config.vectorise_tasks:
        return alg.maml_direction_vectorised(
            net, theta, tasks, inner_steps=config.inner_steps, inner_lr=config.inner_lr,
            first_order=learner == "fomaml")
    if learner == "reptile":
        return alg.reptile_direction(
            net, theta, tasks, inner_steps=config.inner_steps, inner_lr=config.inner_lr,
            inner_batch=config.inner_batch, rng=rng)
    return alg.maml_direction(
        net, theta, tasks, inner_steps=config.inner_steps, inner_lr=config.inner_lr,
        inner_batch=config.inner_batch, first_order=learner == "fomaml", rng=rng)


def transfer_part_count(config: PretrainConfig) -> int:
    """How many parts `transfer_parts` gives an iteration under `config` (0: no transfer step);
    with a mixed-class batch whenever `config.transfer_batch` > 0, as `pretrain` draws it."""
    if config.transfer_weight == 0:
        return 0
    if config.combine == "authors" and config.transfer_batch == 0:
        return config.meta_batch
    return config.transfer_ghost_batches


def transfer_parts(
    tasks: list[alg.Task], config: PretrainConfig,
    transfer_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (images, base labels) batches the transfer step's batch-norm statistics come from:
    the mixed-class batch or the tasks' images in `transfer_ghost_batches` parts, or, in the
    authors' combination, each task's images (they average one transfer step per task)."""
    if transfer_batch is None and config.combine == "authors":
        return [(t.all_x, t.base_y) for t in tasks]
    if transfer_batch is None:
        transfer_batch = (torch.cat([t.all_x for t in tasks]), torch.cat([t.base_y for t in tasks]))
    x, y = transfer_batch
    if config.transfer_ghost_batches == 1:
        return [(x, y)]
    ghosts = config.transfer_ghost_batches
    return list(zip(torch.tensor_split(x, ghosts), torch.tensor_split(y, ghosts), strict=True))


def _transfer_gradient(
    net: MetaNet, theta: alg.Params, parts: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[alg.Params, float]:
    """The cross-entropy's gradient over `parts`, each weighted by its images (equal parts: their
    plain mean); zeros for a process given no part."""
    if not parts:
        return {k: torch.zeros_like(theta[k]) for k in alg.transfer_param_names(net)}, 0.0
    per_part = [alg.transfer_gradient(net, theta, x, y) for x, y in parts]
    if len(per_part) == 1:
        return per_part[0]
    sizes = [len(y) for _, y in parts]
    if len(set(sizes)) == 1:
        grads = {k: torch.stack([g[k] for g, _ in per_part]).mean(0) for k in per_part[0][0]}
        return grads, float(np.mean([loss for _, loss in per_part]))
    w = [n / sum(sizes) for n in sizes]
    grads = {k: torch.stack([wi * g[k] for wi, (g, _) in zip(w, per_part, strict=True)]).sum(0)
             for k in per_part[0][0]}
    return grads, float(np.dot(w, [loss for _, loss in per_part]))


def sample_transfer_batch(
    data: ImageSet, config: PretrainConfig, device: torch.device, rng: np.random.Generator,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A mixed-class batch of `config.transfer_batch` images drawn from all base images."""
    idx = torch.from_numpy(rng.choice(len(data), size=min(config.transfer_batch, len(data)), replace=False))
    x = to_float(data.images[idx.to(data.images.device)].to(device))
    if config.augment:
        x = augment_images(x, gen)
    return x, data.labels[idx].to(device)


def default_adaptation(config: PretrainConfig) -> dict[str, Any]:
    """How `adapt` should fine-tune from this base model unless told otherwise (set by measurement;
    see the README)."""
    if config.algorithm == "protonet":
        return {"steps": 0, "lr": 0.0, "head_init": "prototype", "bn_stats": "frozen"}
    return asdict(AdaptConfig())


def _training_state(
    sampler: EpisodeSampler, rng: np.random.Generator, transfer_rng: np.random.Generator,
    gen: torch.Generator, opt_state: dict[str, torch.Tensor],
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    state_json = {"sampler": sampler.get_state(), "rng": rng.bit_generator.state,
                  "transfer_rng": transfer_rng.bit_generator.state}
    tensors = {"torch_rng": torch.get_rng_state(), "aug_rng": gen.get_state()}
    # Momentum buffers and Adam moments, by name: resuming continues the same optimisation.
    tensors.update({f"opt.{k}": v.detach().cpu() for k, v in opt_state.items()})
    return state_json, tensors


@dataclass
class _RunState:
    """Everything a pretraining run carries from one iteration to the next, and resumes."""

    sampler: EpisodeSampler
    rng: np.random.Generator
    transfer_rng: np.random.Generator
    gen: torch.Generator
    opt_state: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    start_iteration: int = 0
    elapsed_before: float = 0.0

    @classmethod
    def fresh(cls, config: PretrainConfig, data: ImageSet) -> _RunState:
        sampler = EpisodeSampler(
            data.labels, ways=config.ways, shots=config.shots, queries=config.queries,
            replacement=config.replacement, seed=[config.seed, 1],
        )
        return cls(sampler, np.random.default_rng([config.seed, 2]),
                   np.random.default_rng([config.seed, 3]), torch.Generator().manual_seed(config.seed))

    def resume(self, net: MetaNet, out_dir: Path | str, config: PretrainConfig, fingerprint: str,
               device: torch.device) -> None:
        """Continue the run checkpointed in `out_dir` (nothing there: start afresh)."""
        try:
            tensors, card = load_checkpoint(out_dir)
        except CheckpointError:
            return
        if card.get("data", {}).get("fingerprint") != fingerprint:
            raise CheckpointError(f"{out_dir} was trained on different data; cannot resume")
        if PretrainConfig.from_card(card["hyperparameters"]) != config:
            raise CheckpointError(f"{out_dir} was trained with other options; cannot resume")
        net.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("_state.")})
        state = card["training"]
        self.start_iteration = int(state["iteration"])
        self.elapsed_before = float(state["seconds"])
        self.history = list(card.get("history", []))
        self.validation = list(card.get("validation", []))
        self.sampler.set_state(state["sampler"])
        self.rng.bit_generator.state = state["rng"]
        if "transfer_rng" in state:
            self.transfer_rng.bit_generator.state = state["transfer_rng"]
        # A finished run keeps no random or optimiser state: there is nothing left to train.
        if not state["completed"]:
            torch.set_rng_state(tensors["_state.torch_rng"])
            self.gen.set_state(tensors["_state.aug_rng"])
            self.opt_state = {k[len("_state.opt."):]: v.to(device) for k, v in tensors.items()
                              if k.startswith("_state.opt.")}


@dataclass
class _Run:
    """A pretraining run's network, state and where it goes: its card, checkpoints, validation."""

    config: PretrainConfig
    data: ImageSet
    net: MetaNet
    state: _RunState
    device: torch.device
    precision: str
    fingerprint: str
    mean: list[float]
    std: list[float]
    out_dir: Path | str | None
    extra_card: dict[str, Any] | None
    validate: Callable[[MetaNet], dict[str, float]] | None
    writes: bool  # False in every process but the first of a distributed run

    def card(self, iteration: int, seconds: float, completed: bool) -> dict[str, Any]:
        config, data = self.config, self.data
        card: dict[str, Any] = {
            "kind": "base_model",
            "algorithm": config.algorithm,
            "combine": config.combine,
            "backbone": {"name": config.backbone, "filters": config.filters},
            "image_size": config.image_size,
            "channels": config.channels,
            "normalization": {"mean": self.mean, "std": self.std},
            "meta_ways": config.ways,
            "hyperparameters": asdict(config),
            "adaptation": default_adaptation(config),
            "base_classes": data.class_names,
            "data": {"source": data.source, "fingerprint": self.fingerprint,
                     "num_images": len(data), "num_classes": data.num_classes},
            "seed": config.seed,
            "device": str(self.device),
            "precision": self.precision,
            "machine": machine_description(self.device),
            "training": {"iteration": iteration, "iterations": config.iterations,
                         "completed": completed, "seconds": round(seconds, 2)},
            "history": self.state.history,
            "validation": self.state.validation,
            "metrics": {},
        }
        if self.extra_card:
            card.update(self.extra_card)
        return card

    def save(self, iteration: int, seconds: float, completed: bool) -> None:
        if self.out_dir is None or not self.writes:
            return
        st = self.state
        state_json, state_tensors = _training_state(st.sampler, st.rng, st.transfer_rng, st.gen,
                                                    st.opt_state)
        card = self.card(iteration, seconds, completed)
        card["training"].update(state_json)
        save_base_model(self.out_dir, self.net, card,
                        extra_tensors=None if completed else state_tensors)

    def after_iteration(self, done: int, loss_ema: float, seconds: float, validate_every: int) -> None:
        """The training curve's points: the loss 50 times a run, validation every
        `validate_every` iterations."""
        config = self.config
        if done % max(1, config.iterations // 50) == 0:
            self.state.history.append({"iteration": done, "passes": done * config.passes_per_iteration(),
                                       "loss": round(loss_ema, 5), "seconds": round(seconds, 2)})
        # A periodic point within half an interval of the end would duplicate the final one.
        if (validate_every and done % validate_every == 0
                and config.iterations - done >= validate_every // 2):
            self.run_validation(done, seconds)

    def run_validation(self, iteration: int, seconds: float) -> None:
        if self.validate is None or any(v["iteration"] == iteration for v in self.state.validation):
            return
        # Validation must not change training: its own random draws come from a forked RNG, and
        # the network goes back to train mode.
        with torch.random.fork_rng(devices=[]):
            metrics = self.validate(self.net)
        self.net.train()
        self.state.validation.append({
            "iteration": iteration, "passes": iteration * self.config.passes_per_iteration(),
            "seconds": round(seconds, 2), **{k: round(v, 5) for k, v in metrics.items()}})


def _start(config: PretrainConfig, data: ImageSet, device: torch.device, *,
           out_dir: Path | str | None, resume: bool, extra_card: dict[str, Any] | None,
           validate: Callable[[MetaNet], dict[str, float]] | None, sync: Sync | None) -> _Run:
    """A run's network and state: fresh, or continued from `out_dir` with `resume`."""
    if data.channels != config.channels or data.image_size != config.image_size:
        raise ConfigError(
            f"data is {data.channels}x{data.image_size}x{data.image_size} but the config asks for "
            f"{config.channels}x{config.image_size}x{config.image_size}"
        )
    precision = effective_precision(config.precision, device)
    seed_everything(config.seed)
    fingerprint = data.fingerprint()
    mean, std = channel_stats(data)
    net = build_metanet(
        backbone=config.backbone, filters=config.filters, channels=config.channels,
        image_size=config.image_size, meta_ways=config.ways, num_base_classes=data.num_classes,
        mean=mean, std=std, transfer_head=config.transfer_head, cosine_scale=config.cosine_scale,
    ).to(device)
    state = _RunState.fresh(config, data)
    if resume:
        if out_dir is None:
            raise ConfigError("resume needs the output folder of the interrupted run")
        state.resume(net, out_dir, config, fingerprint, device)
    return _Run(config, data, net, state, device, precision, fingerprint, mean, std, out_dir,
                extra_card, validate, writes=sync is None or sync.rank == 0)


def pretrain(
    config: PretrainConfig,
    data: ImageSet,
    *,
    device: torch.device | str = "auto",
    out_dir: Path | str | None = None,
    resume: bool = False,
    checkpoint_every_s: float = 300.0,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    extra_card: dict[str, Any] | None = None,
    validate: Callable[[MetaNet], dict[str, float]] | None = None,
    validate_every: int = 0,
    sync: Sync | None = None,
) -> PretrainResult:
    """Train a base model on `data` (the base classes) and, with `out_dir`, checkpoint it there
    every `checkpoint_every_s` seconds and at the end. `resume` continues from `out_dir`.

    With `validate`, it is called every `validate_every` iterations and at the end (e.g. accuracy
    on validation classes); its results, with the image passes so far, go to the card's
    `validation` list: the training curve. `sync` is one process of a run on several
    (`models.distributed`): every process reads `out_dir`, the first alone writes it."""
    device = resolve_device(device) if isinstance(device, str) else device
    run = _start(config, data, device, out_dir=out_dir, resume=resume, extra_card=extra_card,
                 validate=validate, sync=sync)
    st, net = run.state, run.net
    data_device = data.images.to(device) if device.type == "cuda" else data.images
    on_device = ImageSet(images=data_device, labels=data.labels, class_names=data.class_names,
                         source=data.source)
    net.train()
    t0 = time.perf_counter()
    last_save = t0
    loss_ema = float("nan")
    for iteration in range(st.start_iteration, config.iterations):
        if should_stop is not None and should_stop():
            run.save(iteration, st.elapsed_before + time.perf_counter() - t0, completed=False)
            raise TrainingCancelled(f"pretraining stopped at iteration {iteration}")
        tasks = sample_tasks(on_device, st.sampler, config, device, st.gen)
        mixed = (sample_transfer_batch(on_device, config, device, st.transfer_rng, st.gen)
                 if config.transfer_batch > 0 and config.transfer_weight > 0 else None)
        loss = train_step(net, tasks, config, iteration=iteration, rng=st.rng, state=st.opt_state,
                          transfer_batch=mixed, sync=sync)
        if not np.isfinite(loss):
            raise ConfigError(
                f"training diverged at iteration {iteration + 1} (loss {loss}); lower the learning rates"
            )
        loss_ema = loss if np.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * loss
        seconds = st.elapsed_before + time.perf_counter() - t0
        run.after_iteration(iteration + 1, loss_ema, seconds, validate_every)
        if progress is not None:
            progress(Progress(iteration + 1, config.iterations, loss_ema, seconds))
        if time.perf_counter() - last_save >= checkpoint_every_s and iteration + 1 < config.iterations:
            run.save(iteration + 1, seconds, completed=False)
            last_save = time.perf_counter()
    total_seconds = st.elapsed_before + time.perf_counter() - t0
    run.run_validation(config.iterations, total_seconds)
    run.save(config.iterations, total_seconds, completed=True)
    return PretrainResult(net=net, card=run.card(config.iterations, total_seconds, True),
                          history=st.history)
