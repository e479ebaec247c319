"""The training loop: interruption and exact resumption, cancellation, progress."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from models.config import PretrainConfig
from models.data import ImageSet
from models.errors import ConfigError, TrainingCancelled
from models.training import Progress, pretrain


@pytest.fixture(scope="module")
def small_omniglot(omniglot_background: ImageSet) -> ImageSet:
    return omniglot_background.subset(list(range(0, 964, 40)))


@pytest.mark.parametrize("algorithm", ["mtl-reptile", "protonet"])
def test_interrupted_run_resumes_to_identical_weights(small_omniglot: ImageSet, tmp_path: Path, algorithm: str) -> None:
    config = PretrainConfig(algorithm=algorithm, filters=8, iterations=6, meta_batch=2, inner_steps=2,
                            shots=2, queries=2)
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
