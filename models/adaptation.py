"""Adapting a base model to a new task by plain SGD, and episodic evaluation on unseen classes."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import to_backbone_input
from models.config import AdaptConfig, check_head_init, fit_steps
from models.data import ImageSet, augment_images, to_float
from models.episodes import Episode, EpisodeSampler
from models.errors import ConfigError, TrainingCancelled
from models.network import Classifier, MetaNet
from models.precision import autocast


def _init_head(
    net: MetaNet, backbone: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int,
    head_init: str,
    prototype_scale: float = 10.0,
    precision: str = "fp32",
) -> nn.Linear:
    head = nn.Linear(net.meta_head.in_features, num_classes).to(x.device)
    if head_init == "zeros":
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    elif head_init == "meta":
        check_head_init(head_init, num_classes, net.meta_head.out_features)
        head.load_state_dict(net.meta_head.state_dict())
    else:
        # Nearest class mean as a linear layer: -|f - c|^2 = 2 f.c - |c|^2 - |f|^2, and the last
        # term is the same for every class, so W = 2c, b = -|c|^2 reproduces Prototypical Networks.
        # Divided by the mean |c|^2 and times a fixed scale, the logits keep ProtoNet's ranking
        # but no longer saturate the softmax, so fine-tuning from them still has gradients.
        backbone.eval()
        with torch.no_grad(), autocast(precision, x.device):
            f = backbone(to_backbone_input((x - net.mean) / net.std)).float()
        protos = torch.zeros(num_classes, f.shape[1], device=f.device)
        protos.index_add_(0, y, f)
        protos /= torch.bincount(y, minlength=num_classes).clamp_min(1).unsqueeze(1)
        norm2 = (protos**2).sum(1)
        scale = prototype_scale / norm2.mean().clamp_min(1e-12)
        with torch.no_grad():
            head.weight.copy_(scale * 2 * protos)
            head.bias.copy_(-scale * norm2)
    return head


def _fine_tune(
    clf: Classifier, images: torch.Tensor, labels: torch.Tensor, config: AdaptConfig, seed: int,
    progress: Callable[[int, int, float], None] | None, should_stop: Callable[[], bool] | None,
    precision: str,
) -> None:
    """`config.steps_for(len(images))` SGD steps on every layer of `clf`, in place."""
    n = len(images)
    steps = config.steps_for(n)
    if steps <= 0:
        return
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(clf.parameters(), lr=config.lr)
    bs = n if config.batch_size <= 0 else min(config.batch_size, n)
    clf.train()
    if config.bn_stats == "frozen":
        for m in clf.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    loss_value = float("nan")
    for step in range(steps):
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"adaptation stopped at step {step}")
        if bs < n:
            idx = torch.randperm(n, generator=gen)[:bs].to(images.device)
            xb, yb = images[idx], labels[idx]
        else:
            xb, yb = images, labels
        if config.augment:
            xb = augment_images(xb, gen)
        with autocast(precision, images.device):
            loss = F.cross_entropy(clf(xb), yb)
        if not torch.isfinite(loss):
            raise ConfigError(
                f"adaptation diverged at step {step + 1} (lr {config.lr}); lower the learning rate"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        if progress is not None:
            progress(step + 1, steps, loss_value)
        if step + 1 >= config.steps and loss_value < config.stop_loss:
            break


def adapt(
    net: MetaNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    class_names: Sequence[str] | None = None,
    config: AdaptConfig | None = None,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    precision: str = "fp32",
) -> Classifier:
    """Fine-tune every layer of a copy of `net` with SGD on `images` (floats in [0, 1]) labelled
    0..C-1 under a fresh C-way head. The base model is left untouched. `precision` "bf16" runs
    the steps' forward and backward passes under autocast (the weights stay fp32)."""
    config = config or AdaptConfig()
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    if num_classes < 2:
        raise ConfigError("adaptation needs at least 2 classes")
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(f"{len(names)} class names for {num_classes} classes")
    backbone = copy.deepcopy(net.backbone)
    head = _init_head(net, backbone, images, labels, num_classes, config.head_init,
                      config.prototype_scale, precision)
    clf = Classifier(backbone, head, net.mean, net.std, names)
    _fine_tune(clf, images, labels, config, seed, progress, should_stop, precision)
    return clf.eval()


# The open-set threshold is this quantile of the calibration images' scores: about 95% of images
# like the known ones are accepted (docs/service.md, "Unknown").
UNKNOWN_QUANTILE = 0.05


@torch.no_grad()
def class_prototypes(clf: Classifier, images: torch.Tensor, labels: torch.Tensor,
                     batch: int = 256) -> torch.Tensor:
    """Each class's mean feature direction (C, D), unit length: an image's cosine similarity to
    the nearest one is how much it looks like the classes the classifier was trained on."""
    clf.eval()
    feats = torch.cat([F.normalize(clf.features(images[i:i + batch]), dim=1)
                       for i in range(0, len(images), batch)])
    num_classes = int(labels.max()) + 1
    sums = torch.zeros(num_classes, feats.shape[1], device=feats.device).index_add_(0, labels, feats)
    return F.normalize(sums, dim=1)


@dataclass(frozen=True)
class HoldoutPredictions:
    """The first model's answer for each holdout image: its label and that label's probability."""

    labels: list[int]
    probabilities: list[float]


def fit_classifier(
    net: MetaNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    class_names: Sequence[str],
    config: AdaptConfig,
    seed: int,
    holdout: Sequence[int] = (),
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> tuple[Classifier, HoldoutPredictions | None]:
    """A custom classifier as the service trains one: with a `holdout` (indices), first `adapt`
    on the other images and predict the holdout (phase "holdout_pass"), then `adapt` from the
    base model again on every image (phase "final_pass"). Returns the final classifier and the
    holdout's predictions, in `holdout` order (None without a holdout). The classifier carries its open-set
    prototypes and a threshold: the UNKNOWN_QUANTILE of the holdout's scores by the first model,
    or, without a holdout, of the training images' scores by the final one (optimistic: it fit
    them, so more new images of known classes fall below it). `progress(step, total, loss)` counts
    both passes as one run of steps."""
    held = set(holdout)
    train = [i for i in range(len(images)) if i not in held]
    total = fit_steps(config, len(images), len(held))

    def offset(start: int) -> Callable[[int, int, float], None] | None:
        if progress is None:
            return None
        return lambda step, _steps, loss: progress(start + step, total, loss)

    predicted = None
    calibration: torch.Tensor | None = None
    if held:
        if on_phase is not None:
            on_phase("holdout_pass")
        tr = torch.tensor(train, device=images.device)
        ho = torch.tensor(list(holdout), device=images.device)
        first = adapt(net, images[tr], labels[tr], class_names=class_names, config=config,
                      seed=seed, progress=offset(0), should_stop=should_stop)
        first.set_open_set(class_prototypes(first, images[tr], labels[tr]), None)
        probs, calibration = first.probabilities_and_scores(images[ho])
        top = probs.max(1)
        predicted = HoldoutPredictions(top.indices.cpu().tolist(),
                                       [round(p, 4) for p in top.values.float().cpu().tolist()])
    if on_phase is not None:
        on_phase("final_pass")
    final = adapt(net, images, labels, class_names=class_names, config=config, seed=seed,
                  progress=offset(total - config.steps_for(len(images))),
                  should_stop=should_stop)
    final.set_open_set(class_prototypes(final, images, labels), None)
    if calibration is None:  # no holdout: the training images' own scores (they were fit)
        calibration = final.probabilities_and_scores(images)[1]
    assert calibration is not None
    threshold = float(torch.quantile(calibration.float().cpu(), UNKNOWN_QUANTILE))
    final.set_open_set(final.prototypes, threshold)  # type: ignore[arg-type]
    return final, predicted


@dataclass
class CellResult:
    ways: int
    shots: int
    queries: int
    episodes: int
    accuracy: float
    ci95: float
    transductive: bool = False
    # Accuracy of each episode, in episode order: every method sees the same episodes, so two
    # methods' lists pair up for a paired difference (see `paired_difference`).
    per_episode: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    net: MetaNet,
    data: ImageSet,
    *,
    ways: int,
    shots: int,
    queries: int,
    episodes: int = 600,
    config: AdaptConfig | None = None,
    seed: int = 0,
    transductive: bool = False,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int, float], None] | None = None,
    precision: str = "fp32",
    workers: int = 1,
) -> CellResult:
    """Mean query accuracy over seeded episodes of `data`'s classes, with a 95% interval.

    Episodes depend only on (seed, ways, shots, queries), so every method sees the same ones.
    Non-transductive by default: queries are predicted in eval mode, each independent of the others.
    Transductive mode predicts all queries of an episode as one train-mode batch (batch-norm
    statistics from the queries), as the paper's code did.

    `workers` > 1 spreads the episodes over that many processes of one torch thread each; every
    episode is drawn here and adapted with its own seed, so the result equals one process's at
    one thread (`progress` then counts episodes as they finish, in any order).
    """
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    config = config or AdaptConfig()
    device = torch.device(device)
    sampler = EpisodeSampler(data.labels, ways=ways, shots=shots, queries=queries,
                             seed=[seed, ways, shots, queries])
    drawn = [(e, sampler.sample()) for e in range(episodes)]
    accs = np.zeros(episodes)
    run = _EpisodeRunner(net, data.images, config, seed, transductive, device, precision)
    if workers == 1 or episodes <= 1:
        results: Iterable[tuple[int, float]] = map(run, drawn)
        pool = None
    else:
        pool = _episode_pool(run, min(workers, episodes))
        results = pool.imap_unordered(_run_in_worker, drawn)
    total = 0.0
    try:
        for done, (e, acc) in enumerate(results, 1):
            accs[e] = acc
            total += acc
            if progress is not None:
                progress(done, episodes, total / done)
    finally:
        if pool is not None:
            pool.terminate()
    ci = 1.96 * float(accs.std(ddof=1)) / math.sqrt(episodes) if episodes > 1 else float("nan")
    return CellResult(ways, shots, queries, episodes, float(accs.mean()), ci, transductive,
                      per_episode=[round(float(a), 6) for a in accs])


class _EpisodeRunner:
    """Adapts to one drawn episode and scores its queries: the same code in this process or in
    an evaluation worker (which receives it whole, the images in shared memory)."""

    def __init__(self, net: MetaNet, images: torch.Tensor, config: AdaptConfig, seed: int,
                 transductive: bool, device: torch.device, precision: str) -> None:
        self.net, self.images, self.config = net.to(device), images, config
        self.seed, self.transductive, self.device, self.precision = seed, transductive, device, precision

    def __call__(self, item: tuple[int, Episode]) -> tuple[int, float]:
        e, ep = item
        xs = to_float(self.images[ep.support]).to(self.device)
        ys = ep.support_labels.to(self.device)
        xq = to_float(self.images[ep.query]).to(self.device)
        clf = adapt(self.net, xs, ys, config=self.config, seed=self.seed + e, precision=self.precision)
        with torch.no_grad(), autocast(self.precision, self.device):
            clf.train(self.transductive)
            pred = clf(xq).argmax(1).cpu()
        return e, float((pred == ep.query_labels).float().mean())


_worker_runner: _EpisodeRunner | None = None


def _start_worker(runner: _EpisodeRunner) -> None:
    global _worker_runner
    # One thread each: N workers on N cores, none fighting another for them.
    torch.set_num_threads(1)
    _worker_runner = runner


def _run_in_worker(item: tuple[int, Episode]) -> tuple[int, float]:
    assert _worker_runner is not None, "evaluation worker used before its initialiser ran"
    return _worker_runner(item)


def _episode_pool(runner: _EpisodeRunner, workers: int) -> Any:
    """`workers` fresh processes (spawned: a forked copy of a process with torch's thread pools
    running can deadlock), each holding `runner`; tensors travel through shared memory."""
    import torch.multiprocessing as mp

    return mp.get_context("spawn").Pool(workers, initializer=_start_worker, initargs=(runner,))


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of a - b over shared episodes and its 95% interval half-width (normal approximation).

    Pairing removes the episode-to-episode variance both methods share, so the interval is much
    narrower than the two unpaired intervals combined.
    """
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired difference needs two equal-length lists of >= 2 episodes, "
                         f"got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return float(d.mean()), 1.96 * float(d.std(ddof=1)) / math.sqrt(len(d))
