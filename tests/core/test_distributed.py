"""Pretraining on two gloo processes gives the single-process run's weights, batch-norm statistics
and losses, for every kind of update; the processes stay identical; a run resumes on another
process count. Real Omniglot images, a 4-filter conv4: two process start-ups dominate the time.

The equality runs compute in float64. In float32 a run's rounding depends on how its sums are
split (processes, or threads: one process on 1 and on 2 threads differs as much), and Adam's
normalised step (ProtoNet) turns the rounding of a gradient that is zero in exact arithmetic
(a conv bias ahead of batch norm) into steps as large as its learning rate; float64 keeps that
noise far below any real difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from models import training
from models.checkpoint import load_checkpoint
from models.config import PretrainConfig
from models.data import ImageSet
from models.distributed import (
    _join_group,
    end_spawned_process,
    group_run,
    launch,
    pretrain_in_group,
    spread_warnings,
)
from models.errors import ConfigError, TrainingCancelled
from models.training import pretrain

# Spawned processes: outside the fast loop (`pytest -m "not slow"`), like the other subprocess tests.
pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
TINY: dict[str, Any] = dict(filters=4, iterations=3, ways=3, shots=1, queries=2, inner_steps=2)
RECIPE: dict[str, Any] = dict(transfer_batch=12, momentum=0.9, weight_decay=5e-4,
                              transfer_schedule="cosine", transfer_head="standard", augment=True)
# Each a different way of splitting the work: tasks split 2 + 2 or 1 + 2 (weighted means), Adam
# after the mean, the transfer step on the first process alone (1 part) or split (2 ghost
# batches), per-task transfer steps (authors), the vectorised meta-batch's statistics.
CONFIGS = {
    "reptile": dict(algorithm="reptile", meta_batch=4),
    # Mini-batched inner loops draw from one random stream, task after task: each process skips
    # the other processes' draws (5 of a task's 9 images a step, 3 support images 2 at a time).
    "reptile-batches": dict(algorithm="reptile", meta_batch=3, inner_batch=5),
    "fomaml-batches": dict(algorithm="fomaml", meta_batch=3, inner_batch=2, inner_steps=3),
    "protonet": dict(algorithm="protonet", meta_batch=3, protonet_lr=0.01),
    "transfer": dict(algorithm="transfer", meta_batch=1, transfer_ghost_batches=2, **RECIPE),
    "mtl-reptile": dict(algorithm="mtl-reptile", meta_batch=3, transfer_lr=0.5),
    "mtl-protonet": dict(algorithm="mtl-protonet", meta_batch=2, transfer_ghost_batches=4, **RECIPE),
    "maml": dict(algorithm="maml", meta_batch=2),
    "mtl-maml": dict(algorithm="mtl-maml", meta_batch=2, transfer_ghost_batches=2),
    "mtl-fomaml": dict(algorithm="mtl-fomaml", meta_batch=3, combine="authors", beta=0.3,
                       vectorise_tasks=True),
}


def config_of(name: str) -> PretrainConfig:
    return PretrainConfig(**{**TINY, **CONFIGS[name]})


@pytest.fixture(scope="module")
def small_omniglot(omniglot_background: ImageSet) -> ImageSet:
    return omniglot_background.subset(list(range(0, 964, 40)))


def float64_training(patch: Any) -> None:
    """Networks and images in float64 (`patch(module, name, value)` sets an attribute)."""
    build = training.build_metanet
    patch(training, "build_metanet", lambda **kw: build(**kw).double())
    patch(training, "to_float", lambda images: images.double().div_(255.0))


def _second_process(index: int, store: str, data: ImageSet, folder: Path) -> None:
    torch.set_num_threads(1)
    float64_training(setattr)
    _join_group(store, 1, 2, CPU, 120)
    with group_run():
        for name in CONFIGS:
            result = pretrain_in_group(config_of(name), data, device=CPU)
            torch.save(result.net.state_dict(), folder / f"{name}.second.pt")
    end_spawned_process()


@pytest.fixture(scope="module")
def runs(small_omniglot: ImageSet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every config of CONFIGS on one process, and on two (this one first, one spawned) in one
    group, in float64."""
    folder = tmp_path_factory.mktemp("distributed")
    store = str(folder / "store")
    child = mp.start_processes(_second_process, args=(store, small_omniglot, folder), nprocs=1,
                               join=False, start_method="spawn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp64:
            float64_training(mp64.setattr)
            _join_group(store, 0, 2, CPU, 120)
            with group_run():
                spread = {name: pretrain_in_group(config_of(name), small_omniglot, device=CPU,
                                                  out_dir=folder / name) for name in CONFIGS}
            single = {name: pretrain(config_of(name), small_omniglot, device=CPU) for name in CONFIGS}
        while not child.join(60):
            pass
    finally:
        torch.set_num_threads(threads)
    second = {name: torch.load(folder / f"{name}.second.pt", weights_only=True) for name in CONFIGS}
    return {"single": single, "spread": spread, "second": second, "folder": folder}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_processes_give_the_single_process_run(runs: dict[str, Any], name: str) -> None:
    single, spread = runs["single"][name], runs["spread"][name]
    # Weights and batch-norm statistics (running means, variances, counts) alike.
    # The vectorised meta-batch averages its tasks' statistics in float32 (algorithms.py).
    assert_same_state(single.net.state_dict(), spread.net.state_dict(),
                      1e-5 if config_of(name).vectorise_tasks else 1e-7)
    # The two processes hold the same network, to the bit.
    for k, v in spread.net.state_dict().items():
        assert torch.equal(v, runs["second"][name][k]), k
    assert [h["loss"] for h in single.history] == pytest.approx([h["loss"] for h in spread.history],
                                                                 rel=1e-9)
    # The first process wrote the checkpoint; the card says how many processes ran.
    tensors, card = load_checkpoint(runs["folder"] / name)
    assert card["hyperparameters"]["processes"] == 2 and card["training"]["completed"]
    assert torch.equal(tensors["backbone.0.0.weight"], spread.net.state_dict()["backbone.0.0.weight"])


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_a_stopped_run_resumes_on_another_process_count(
    small_omniglot: ImageSet, tmp_path: Path, before: int, after: int
) -> None:
    # float32 here, through `launch` (spawned processes, the stop agreed by all). No Adam: see
    # the module's docstring.
    config = PretrainConfig(**{**TINY, **CONFIGS["mtl-reptile"], **RECIPE, "iterations": 5,
                               "transfer_ghost_batches": 2})
    straight = pretrain(config, small_omniglot, device="cpu")
    asked = {"n": 0}

    def stop_after_two() -> bool:
        asked["n"] += 1
        return asked["n"] > 2

    out = tmp_path / "run"
    with pytest.raises(TrainingCancelled, match="iteration 2"):
        launch(config, small_omniglot, processes=before, device="cpu", out_dir=out,
               should_stop=stop_after_two)
    _, card = load_checkpoint(out)
    assert card["training"]["iteration"] == 2 and card["hyperparameters"]["processes"] == before
    # Momentum buffers and every random stream continue on the other count.
    resumed = launch(config, small_omniglot, processes=after, device="cpu", out_dir=out, resume=True)
    assert_same_state(straight.net.state_dict(), resumed.net.state_dict(), 1e-5)
    _, card = load_checkpoint(out)
    assert card["hyperparameters"]["processes"] == after and card["training"]["completed"]


def test_ghost_batches_and_processes_in_the_config() -> None:
    with pytest.raises(ConfigError, match="more than the transfer step's 12 images"):
        PretrainConfig(transfer_batch=12, transfer_ghost_batches=13)
    with pytest.raises(ConfigError, match="one task at a time"):
        PretrainConfig(combine="authors", transfer_ghost_batches=2)
    # The process count is how a run is spread, not what it computes.
    assert PretrainConfig(processes=4) == PretrainConfig(processes=1)


@pytest.mark.parametrize("config", [
    PretrainConfig(algorithm="mtl-reptile", meta_batch=3, combine="authors"),
    PretrainConfig(algorithm="mtl-reptile", meta_batch=3, transfer_ghost_batches=2),
    PretrainConfig(algorithm="mtl-fomaml", meta_batch=2, transfer_batch=16, transfer_ghost_batches=4),
    PretrainConfig(algorithm="transfer", meta_batch=2),
    PretrainConfig(algorithm="fomaml", meta_batch=2),
])
def test_the_idle_warning_counts_the_parts_train_step_spreads(
    small_omniglot: ImageSet, config: PretrainConfig
) -> None:
    """`spread_warnings` counts an iteration's work as `train_step` splits it: its tasks and the
    parts `transfer_parts` makes (a mixed-class batch when `transfer_batch` > 0)."""
    import numpy as np

    from models.episodes import EpisodeSampler

    sampler = EpisodeSampler(small_omniglot.labels, ways=config.ways, shots=config.shots,
                             queries=config.queries)
    tasks = training.sample_tasks(small_omniglot, sampler, config, torch.device("cpu"),
                                  torch.Generator().manual_seed(0))
    mixed = (training.sample_transfer_batch(small_omniglot, config, torch.device("cpu"),
                                            np.random.default_rng(0), torch.Generator())
             if config.transfer_batch > 0 else None)
    parts = len(training.transfer_parts(tasks, config, mixed)) if config.transfer_weight > 0 else 0
    assert training.transfer_part_count(config) == parts
    work = max(config.meta_batch if config.meta_weight > 0 else 0, parts)
    idle = [w for w in spread_warnings(config, work + 1) if "idle" in w]
    assert len(idle) == 1 and idle[0].startswith(f"{work + 1} processes") and "1 will wait" in idle[0]
    assert not [w for w in spread_warnings(config, work) if "idle" in w]
