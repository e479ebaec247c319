"""Mixed precision (bf16 autocast) and worker-parallel evaluation, on real Omniglot images."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import algorithms as alg
from models import precision as precision_module
from models.adaptation import evaluate
from models.checkpoint import load_checkpoint
from models.config import ALGORITHMS, AdaptConfig, PretrainConfig
from models.data import ImageSet, augment_images, to_float
from models.episodes import EpisodeSampler
from models.errors import ConfigError
from models.network import MetaNet, build_metanet
from models.precision import autocast, bf16_supported
from models.training import pretrain, sample_tasks, train_step

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16")


def conv4(data: ImageSet, seed: int = 0) -> MetaNet:
    torch.manual_seed(seed)
    net = build_metanet(backbone="conv4", filters=32, channels=1, image_size=28, meta_ways=5,
                        num_base_classes=data.num_classes, mean=[0.92], std=[0.27],
                        transfer_head="standard")
    # A zero meta head gives the backbone no gradient on the first inner step.
    torch.nn.init.normal_(net.meta_head.weight, std=0.1)
    return net


def real_tasks(data: ImageSet, count: int = 2) -> list[alg.Task]:
    sampler = EpisodeSampler(data.labels, ways=5, shots=5, queries=5, seed=0)
    tasks = []
    for _ in range(count):
        ep = sampler.sample()
        x = to_float(data.images[ep.all_indices])
        tasks.append(alg.Task(x[:25], ep.support_labels, x[25:], ep.query_labels, data.labels[ep.all_indices]))
    return tasks


DIRECTIONS: dict[str, Callable[[MetaNet, alg.Params, list[alg.Task]], tuple[alg.Params, float]]] = {
    "transfer": lambda net, theta, tasks: alg.transfer_gradient(
        net, theta, torch.cat([t.all_x for t in tasks]), torch.cat([t.base_y for t in tasks])),
    "protonet": lambda net, theta, tasks: alg.protonet_gradient(net, theta, tasks),
    "reptile": lambda net, theta, tasks: alg.reptile_direction(net, theta, tasks, inner_steps=3, inner_lr=0.1),
    "fomaml": lambda net, theta, tasks: alg.maml_direction(net, theta, tasks, inner_steps=2, inner_lr=0.1,
                                                         first_order=True),
    "maml": lambda net, theta, tasks: alg.maml_direction(net, theta, tasks, inner_steps=2, inner_lr=0.1),
}


@needs_bf16
@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_bf16_directions_agree_with_fp32(name: str, omniglot_background: ImageSet) -> None:
    """Every update an algorithm is made of (the transfer gradient; each meta-learner's direction,
    MAML's second-order one included) computed under bf16 autocast points where fp32's does.

    The tolerance is set against how sensitive these directions are anyway: fp32 arithmetic on
    the same images rounded to bf16 already moves them by 3% (transfer) to 17% (FOMAML) of
    their norm on this 32-filter Conv-4 and 5-way 5+5 tasks; bf16 autocast moved them by 6-26%
    (cosine 0.96-0.998). Asserted: cosine >= 0.95 and relative error <= 0.35, and that bf16 did
    change something (a run that silently stayed fp32 would pass the first two). Pretraining
    still keeps the inner loops (Reptile, MAML, FOMAML) in fp32: errors this small per direction
    cost MTL-Reptile 2-7 points over a run (docs/speed.md)."""
    net = conv4(omniglot_background)
    tasks = real_tasks(omniglot_background)
    theta = alg.current_params(net)
    direction = DIRECTIONS[name]
    fp32, _ = direction(copy.deepcopy(net), theta, tasks)
    with autocast("bf16", CPU):
        bf16, loss = direction(copy.deepcopy(net), theta, tasks)
    assert np.isfinite(loss)
    a = torch.cat([v.flatten() for v in fp32.values()])
    b = torch.cat([bf16[k].flatten() for k in fp32])
    assert all(v.dtype == torch.float32 for v in bf16.values())  # the weights' dtype, not bf16
    relative = float((a - b).norm() / a.norm())
    assert F.cosine_similarity(a, b, dim=0) >= 0.95
    assert 1e-4 < relative <= 0.35


@needs_bf16
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_every_algorithm_trains_a_step_in_bf16(algorithm: str, omniglot_background: ImageSet) -> None:
    """One train_step of each of the nine algorithms under bf16: finite loss, fp32 weights that
    moved, and the same move as fp32 to within bf16's error."""
    config = PretrainConfig(algorithm=algorithm, filters=32, meta_batch=2, inner_steps=2, outer_lr=0.1,
                            transfer_lr=0.1, precision="bf16")
    net = conv4(omniglot_background)
    tasks = real_tasks(omniglot_background)
    start = {k: v.clone() for k, v in alg.current_params(net).items()}

    def step(precision: str) -> dict[str, torch.Tensor]:
        moved = copy.deepcopy(net)
        loss = train_step(moved, tasks, PretrainConfig(**{**config.__dict__, "precision": precision}),
                          iteration=0, rng=np.random.default_rng(0))
        assert np.isfinite(loss)
        return {k: (v - start[k]).flatten() for k, v in alg.current_params(moved).items()}

    fp32, bf16 = step("fp32"), step("bf16")
    a, b = torch.cat(list(fp32.values())), torch.cat([bf16[k] for k in fp32])
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert b.norm() > 0
    if algorithm in ("reptile", "maml", "fomaml"):
        # Inner loops stay fp32 under bf16 (models.precision.full_precision): the same update.
        assert torch.equal(a, b)
    else:
        assert not torch.equal(a, b)
        assert F.cosine_similarity(a, b, dim=0) >= 0.9


def test_vectorised_inner_loops_run_in_fp32_under_bf16(omniglot_background: ImageSet) -> None:
    """vmap's batch norm has no mixed bf16 path; the inner loops never see bf16, so a vectorised
    meta-batch trains under precision bf16 exactly as in fp32."""
    tasks = real_tasks(omniglot_background)
    moved = []
    for precision in ("fp32", "bf16"):
        net = conv4(omniglot_background)
        config = PretrainConfig(algorithm="maml", filters=32, meta_batch=2, inner_steps=1, outer_lr=0.1,
                                vectorise_tasks=True, precision=precision)  # type: ignore[arg-type]
        train_step(net, tasks, config, iteration=0, rng=np.random.default_rng(0))
        moved.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert torch.equal(moved[0], moved[1])
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16"):
        PretrainConfig(precision="fp16")  # type: ignore[arg-type]


def test_a_card_from_before_the_option_reads_as_fp32() -> None:
    assert PretrainConfig.from_card({"algorithm": "transfer"}).precision == "fp32"
    assert PretrainConfig.from_card({"algorithm": "transfer", "precision": "bf16"}).precision == "bf16"


def test_without_native_bf16_a_run_is_fp32_with_one_notice(
    omniglot_background: ImageSet, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """A CPU without bf16 support: the run goes on in fp32 (the same weights as an fp32 run),
    the card says so, and the notice is one line, once."""
    monkeypatch.setattr(precision_module, "bf16_supported", lambda device_type: False)
    monkeypatch.setattr(precision_module, "_noticed", set())
    small = omniglot_background.subset(list(range(20)))
    config = PretrainConfig(algorithm="mtl-reptile", filters=8, iterations=3, precision="bf16")
    with caplog.at_level(logging.WARNING, logger="models.precision"):
        asked = pretrain(config, small, device="cpu", out_dir=tmp_path / "bf16")
        pretrain(config, small, device="cpu", out_dir=tmp_path / "again")
    plain = pretrain(PretrainConfig(**{**config.__dict__, "precision": "fp32"}), small, device="cpu")
    notices = [r.getMessage() for r in caplog.records if r.name == "models.precision"]
    assert notices == ["bf16 is not supported natively on this cpu: running in fp32"]
    _, card = load_checkpoint(tmp_path / "bf16")
    assert card["precision"] == "fp32" and card["hyperparameters"]["precision"] == "bf16"
    for (name, p), q in zip(asked.net.named_parameters(), plain.net.parameters(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.slow
@needs_bf16
def test_precision_end_to_end_through_the_cli(shared_data: Path, tmp_path: Path) -> None:
    """`mtl pretrain --precision bf16` then `mtl evaluate --precision bf16 --workers 2` on real
    Omniglot: finite losses, the card and the report record bf16, and it learned something."""
    out = tmp_path / "model"
    env = {"MTL_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
           "MTL_DATA_ROOT": str(shared_data)}

    def mtl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True,
                              cwd=REPO, env=env, timeout=600, check=False)

    done = mtl("pretrain", "--dataset", str(shared_data / "omniglot" / "images_background.npz"),
               "--algorithm", "mtl-protonet", "--filters", "16", "--iterations", "150",
               "--precision", "bf16", "--out", str(out))
    assert done.returncode == 0, done.stderr
    _, card = load_checkpoint(out)
    assert card["precision"] == "bf16" and card["hyperparameters"]["precision"] == "bf16"
    assert all(np.isfinite(h["loss"]) for h in card["history"]) and card["history"]
    report_path = tmp_path / "eval.json"
    done = mtl("evaluate", "--checkpoint", str(out), "--dataset",
               str(shared_data / "omniglot" / "images_evaluation.npz"), "--ways", "5", "--shots", "1",
               "--episodes", "20", "--precision", "bf16", "--workers", "2", "--json", str(report_path))
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    assert report["config"]["precision"] == "bf16" and report["config"]["workers"] == 2
    assert "; bf16; " in done.stdout
    # Chance is 20%; 150 iterations of MTL-ProtoNet at 16 filters get far above it.
    assert report["results"][0]["accuracy"] > 0.5
    refused = mtl("evaluate", "--checkpoint", str(out), "--dataset", "x", "--workers", "0")
    assert refused.returncode == 2 and "--workers: must be at least 1" in refused.stderr


@pytest.mark.slow
def test_evaluation_in_worker_processes_equals_one_process(omniglot_evaluation: ImageSet) -> None:
    """Episodes spread over 3 one-thread processes give one one-thread process's accuracies,
    episode by episode (fine-tuning with augmentation and mini-batches, so every episode's own
    seed matters), and the progress callback sees every episode."""
    net = conv4(omniglot_evaluation)
    config = AdaptConfig(steps=8, batch_size=10, augment=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = evaluate(net, omniglot_evaluation, ways=5, shots=3, queries=4, episodes=9, config=config, seed=5)
        seen: list[int] = []
        spread = evaluate(net, omniglot_evaluation, ways=5, shots=3, queries=4, episodes=9, config=config,
                          seed=5, workers=3, progress=lambda done, total, acc: seen.append(done))
    finally:
        torch.set_num_threads(threads)
    assert spread.per_episode == one.per_episode
    assert len(set(one.per_episode)) > 1  # the episodes differ: equality above means something
    assert seen == list(range(1, 10))
    with pytest.raises(ConfigError, match="workers must be at least 1"):
        evaluate(net, omniglot_evaluation, ways=5, shots=1, queries=1, episodes=2, workers=0)


def _padded_gather(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The augmentation as first written (replicate-pad by 4, then one gather): the reference."""
    n, c, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    padded = F.pad(x, (4, 4, 4, 4), mode="replicate")
    dy, dx = torch.randint(0, 9, (2, n), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


@pytest.mark.parametrize("shape", [(64, 3, 84, 84), (9, 1, 28, 28), (2, 3, 5, 7)])
def test_augmentation_equals_the_padded_gather(shape: tuple[int, int, int, int]) -> None:
    x = torch.rand(*shape)
    for seed in range(3):
        assert torch.equal(augment_images(x, torch.Generator().manual_seed(seed)),
                           _padded_gather(x, torch.Generator().manual_seed(seed)))


def test_sampled_tasks_are_the_same_with_the_faster_augmentation(omniglot_background: ImageSet) -> None:
    """Pretraining's draws (which images, which flips and shifts) did not change with it: a run
    resumed across the change continues the same stream."""
    config = PretrainConfig(augment=True, meta_batch=2)
    sampler = EpisodeSampler(omniglot_background.labels, ways=5, shots=5, queries=5, seed=0)
    tasks = sample_tasks(omniglot_background, sampler, config, CPU, torch.Generator().manual_seed(1))
    again = EpisodeSampler(omniglot_background.labels, ways=5, shots=5, queries=5, seed=0)
    gen = torch.Generator().manual_seed(1)
    for task in tasks:
        ep = again.sample()
        x = _padded_gather(to_float(omniglot_background.images[ep.all_indices]), gen)
        assert torch.equal(task.all_x, x)
