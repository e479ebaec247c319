"""The training loop: interruption and exact resumption, cancellation, progress."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.config import PretrainConfig
from models.data import ImageSet, augment_images
from models.errors import ConfigError, TrainingCancelled
from models.network import MetaNet
from models.training import Progress, pretrain, sample_transfer_batch


@pytest.fixture(scope="module")
def small_omniglot(omniglot_background: ImageSet) -> ImageSet:
    return omniglot_background.subset(list(range(0, 964, 40)))


# The supervised recipe: its momentum buffers, Adam moments and mixed-batch sampler must resume too.
RECIPE = dict(transfer_batch=12, momentum=0.9, weight_decay=5e-4, transfer_schedule="cosine",
              transfer_head="standard", augment=True)


@pytest.mark.parametrize(("algorithm", "extra"), [("mtl-reptile", {}), ("protonet", {}),
                                                  ("mtl-protonet", RECIPE), ("transfer", RECIPE)])
def test_interrupted_run_resumes_to_identical_weights(
    small_omniglot: ImageSet, tmp_path: Path, algorithm: str, extra: dict[str, object]
) -> None:
    config = PretrainConfig(algorithm=algorithm, filters=8, iterations=6, meta_batch=2, inner_steps=2,
                            shots=2, queries=2, **extra)  # type: ignore[arg-type]
    straight = pretrain(config, small_omniglot, device="cpu")

    calls = {"n": 0}

    def stop_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    out = tmp_path / "run"
    with pytest.raises(TrainingCancelled, match="iteration 3"):
        pretrain(config, small_omniglot, device="cpu", out_dir=out, should_stop=stop_after_three)
    _, card = load_checkpoint(out)
    assert card["training"]["iteration"] == 3 and not card["training"]["completed"]

    seen: list[Progress] = []
    resumed = pretrain(config, small_omniglot, device="cpu", out_dir=out, resume=True, progress=seen.append)
    assert [p.iteration for p in seen] == [4, 5, 6]
    for (k, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    tensors, card = load_checkpoint(out)
    assert card["training"]["completed"]
    assert not [k for k in tensors if k.startswith("_state.")]


def test_config_errors_name_the_problem(small_omniglot: ImageSet) -> None:
    with pytest.raises(ConfigError, match="unknown algorithm 'nope'.*mtl-reptile"):
        PretrainConfig(algorithm="nope")
    with pytest.raises(ConfigError, match="beta must be in"):
        PretrainConfig(beta=1.5)
    with pytest.raises(ConfigError, match="config asks for 3x84x84"):
        pretrain(PretrainConfig(channels=3, image_size=84), small_omniglot, device="cpu")


def test_mixed_class_batches_come_from_all_base_classes(small_omniglot: ImageSet) -> None:
    config = PretrainConfig(algorithm="transfer", transfer_batch=64, image_size=28, channels=1)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    labels = torch.cat([sample_transfer_batch(small_omniglot, config, torch.device("cpu"), rng, gen)[1]
                        for _ in range(10)])
    assert len(labels) == 640
    # 25 classes in the data; a 5-way task would show at most 5 per batch.
    assert len(set(labels.tolist())) == small_omniglot.num_classes


def test_augmentation_draws_a_shift_and_flip_for_each_image() -> None:
    x = torch.zeros(64, 1, 12, 12)
    x[:, :, 5, 2] = 1.0  # one bright pixel, off centre
    out = augment_images(x, torch.Generator().manual_seed(0))
    positions = {tuple(torch.nonzero(img[0]).flatten().tolist()) for img in out}
    assert len(positions) > 20  # one shift per batch would give a single position
    assert out.shape == x.shape


def test_validation_curve_is_recorded_without_changing_training(small_omniglot: ImageSet, tmp_path: Path) -> None:
    config = PretrainConfig(algorithm="transfer", filters=8, iterations=4, transfer_batch=8, shots=2,
                            queries=2, transfer_head="standard")
    plain = pretrain(config, small_omniglot, device="cpu")
    calls: list[int] = []

    def validate(net: MetaNet) -> dict[str, float]:
        calls.append(1)
        torch.rand(3)  # validation may draw random numbers; training must not notice
        net.eval()
        return {"accuracy": 0.5}

    watched = pretrain(config, small_omniglot, device="cpu", out_dir=tmp_path / "run", validate=validate,
                       validate_every=2)
    assert [(v["iteration"], v["passes"], v["accuracy"]) for v in watched.card["validation"]] == [
        (2, 16, 0.5), (4, 32, 0.5)]
    assert len(calls) == 2
    for (k, a), b in zip(plain.net.state_dict().items(), watched.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    _, card = load_checkpoint(tmp_path / "run")
    assert card["validation"] == watched.card["validation"]
