"""Adaptation to new tasks and checkpoint files."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch

from models.adaptation import adapt, evaluate, fit_classifier, paired_difference
from models.checkpoint import (
    load_base_model,
    load_checkpoint,
    load_classifier,
    save_base_model,
    save_classifier,
)
from models.config import AdaptConfig
from models.data import ImageSet
from models.errors import CheckpointError, ConfigError
from models.network import build_metanet


def small_net(ways: int = 5):
    """A small untrained base model whose batch-norm statistics, like a pretrained one's, fit
    the data (frozen-statistics adaptation relies on that)."""
    torch.manual_seed(0)
    net = build_metanet(backbone="conv4", filters=8, channels=1, image_size=28, meta_ways=ways,
                        num_base_classes=7, mean=[0.5], std=[0.3])
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    net.train()
    with torch.no_grad():
        for seed in range(3):
            net(some_images(10, 4, seed=100 + seed)[0])
    return net.eval()


def some_images(n_classes: int, per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    base = torch.rand(n_classes, 1, 28, 28, generator=g)
    x = (base[labels] + 0.1 * torch.rand(len(labels), 1, 28, 28, generator=g)).clamp(0, 1)
    return x, labels


def test_augmented_adaptation_trains_on_shifted_views_and_still_fits_the_support() -> None:
    net = small_net()
    # Smooth images (7x7 noise enlarged), whose identity survives a shift of a few pixels.
    y = torch.arange(5).repeat_interleave(3)
    coarse = torch.rand(5, 1, 7, 7, generator=torch.Generator().manual_seed(3))
    x = torch.nn.functional.interpolate(coarse, size=28, mode="bilinear")[y]
    plain = adapt(net, x, y, config=AdaptConfig(steps=60, lr=0.03))
    augmented = adapt(net, x, y, config=AdaptConfig(steps=60, lr=0.03, augment=True))
    again = adapt(net, x, y, config=AdaptConfig(steps=60, lr=0.03, augment=True))
    # Different views, so different weights; the same seed, so the same views.
    assert not torch.allclose(plain.head.weight, augmented.head.weight)
    torch.testing.assert_close(augmented.head.weight, again.head.weight)
    assert float((augmented.predict_proba(x).argmax(1) == y).float().mean()) == 1.0


@pytest.mark.parametrize("classes", [2, 5, 11])
@pytest.mark.parametrize("head_init", ["zeros", "prototype"])
def test_adapt_builds_a_head_of_any_size_and_learns_the_support(classes: int, head_init: str) -> None:
    net = small_net()
    x, y = some_images(classes, 3)
    clf = adapt(net, x, y, config=AdaptConfig(steps=60, lr=0.03, head_init=head_init))
    probs = clf.predict_proba(x)
    assert probs.shape == (len(x), classes)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(x)))
    assert float((probs.argmax(1) == y).float().mean()) == 1.0


@pytest.mark.parametrize(("images", "batch", "min_epochs", "expected"),
                         [(10, 64, 20, 30), (300, 64, 20, 94), (300, 0, 20, 30), (300, 64, 0, 30)])
def test_min_epochs_adds_steps_only_where_batches_are_smaller_than_the_support(
        images: int, batch: int, min_epochs: float, expected: int) -> None:
    x, y = some_images(images // 5, 5)
    config = AdaptConfig(steps=30, lr=0.01, batch_size=batch, min_epochs=min_epochs)
    assert config.steps_for(images) == expected
    seen: list[int] = []
    adapt(small_net(), x, y, config=config, progress=lambda step, total, _loss: seen.append(total))
    assert len(seen) == expected and set(seen) == {expected}
    with pytest.raises(ConfigError, match="must not be negative"):
        AdaptConfig(min_epochs=-1)


def test_stop_loss_ends_only_the_extra_steps_once_the_support_is_fitted() -> None:
    x, y = some_images(5, 8, seed=5)
    seen: list[tuple[int, float]] = []
    config = AdaptConfig(steps=10, lr=0.5, batch_size=8, min_epochs=200, stop_loss=0.05)
    adapt(small_net(), x, y, config=config, progress=lambda step, _total, loss: seen.append((step, loss)))
    total = config.steps_for(40)
    assert total == 1000
    # It stopped early, at the first batch under the threshold after the minimum of 10 steps.
    assert 10 <= len(seen) < total
    assert seen[-1][1] < 0.05 and all(loss >= 0.05 for step, loss in seen[10:-1])
    never = AdaptConfig(steps=10, lr=0.5, batch_size=8, min_epochs=2, stop_loss=10.0)
    steps: list[int] = []
    adapt(small_net(), x, y, config=never, progress=lambda step, _total, _loss: steps.append(step))
    assert len(steps) == 10  # the first `steps` always run


def test_adapt_leaves_the_base_model_untouched_and_meta_head_needs_matching_ways() -> None:
    net = small_net(ways=5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = some_images(5, 2)
    adapt(net, x, y, config=AdaptConfig(steps=5, lr=0.5, head_init="meta", bn_stats="support"))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    x3, y3 = some_images(3, 2)
    with pytest.raises(ConfigError, match="needs exactly 5 classes"):
        adapt(net, x3, y3, config=AdaptConfig(head_init="meta"))


def test_prediction_of_an_image_does_not_depend_on_its_batch() -> None:
    net = small_net()
    x, y = some_images(4, 3)
    clf = adapt(net, x, y, config=AdaptConfig(steps=10, lr=0.1, bn_stats="support"))
    batch = clf.predict_proba(x)
    for i in range(len(x)):
        alone = clf.predict_proba(x[i : i + 1])
        torch.testing.assert_close(alone[0], batch[i], rtol=1e-5, atol=1e-6)


def test_prototype_head_with_no_steps_is_nearest_class_mean() -> None:
    net = small_net().eval()
    x, y = some_images(4, 3, seed=1)
    clf = adapt(net, x, y, config=AdaptConfig(steps=0, head_init="prototype"))
    q, _qy = some_images(4, 2, seed=1)
    with torch.no_grad():
        f, fq = net.features(x), net.features(q)
    protos = torch.stack([f[y == c].mean(0) for c in range(4)])
    nearest = torch.cdist(fq, protos).argmin(1)
    assert torch.equal(clf.predict_proba(q).argmax(1), nearest)


def test_prototype_head_is_scaled_so_fine_tuning_starts_unsaturated() -> None:
    """The scaled prototype head keeps ProtoNet's ranking (0 steps) but its logits scale with
    `prototype_scale` and stay far from saturating the softmax."""
    net = small_net().eval()
    x, y = some_images(5, 3, seed=4)
    q, _ = some_images(5, 2, seed=4)
    logits = {}
    for scale in (1.0, 10.0):
        clf = adapt(net, x, y, config=AdaptConfig(steps=0, head_init="prototype", prototype_scale=scale))
        with torch.no_grad():
            logits[scale] = clf(q)
        with torch.no_grad():
            f, fq = net.features(x), net.features(q)
        protos = torch.stack([f[y == c].mean(0) for c in range(5)])
        assert torch.equal(logits[scale].argmax(1), torch.cdist(fq, protos).argmin(1))
        # Mean squared prototype norm maps to `scale`: the head's bias is -scale * |c|^2 / mean|c|^2.
        torch.testing.assert_close(clf.head.bias.mean(), torch.tensor(-scale))
    centred = {s: v - v.mean(1, keepdim=True) for s, v in logits.items()}
    torch.testing.assert_close(centred[10.0], 10 * centred[1.0], rtol=1e-4, atol=1e-4)
    assert float(torch.softmax(logits[10.0], 1).max(1).values.mean()) < 0.999
    with pytest.raises(ConfigError, match="prototype_scale must be positive"):
        AdaptConfig(prototype_scale=0)


def test_paired_difference_removes_the_shared_episode_variance() -> None:
    a = [0.9, 0.5, 0.7, 0.3, 0.8]
    b = [0.8, 0.4, 0.7, 0.2, 0.6]
    diff, ci = paired_difference(a, b)
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / 5
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / 4)
    assert diff == pytest.approx(0.1) and ci == pytest.approx(1.96 * sd / math.sqrt(5))
    # Unpaired, the episodes' own spread (0.3 to 0.9) would swamp a 0.1 difference.
    assert ci < 0.1
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference(a, b[:3])


def test_evaluate_is_deterministic_and_reports_an_interval() -> None:
    net = small_net()
    x, y = some_images(6, 6, seed=2)
    data = ImageSet(images=(x * 255).to(torch.uint8), labels=y, class_names=[str(i) for i in range(6)])
    config = AdaptConfig(steps=3, lr=0.1)
    a = evaluate(net, data, ways=3, shots=1, queries=2, episodes=5, config=config, seed=1)
    b = evaluate(net, data, ways=3, shots=1, queries=2, episodes=5, config=config, seed=1)
    assert a == b
    # Each episode scores 3 ways x 2 queries = 6 images: its accuracy is a whole number of sixths.
    assert len(a.per_episode) == 5
    assert all(0 <= round(acc * 6) <= 6 and acc == pytest.approx(round(acc * 6) / 6)
               for acc in a.per_episode)
    assert a.accuracy == pytest.approx(sum(a.per_episode) / 5)
    mean = a.accuracy
    sample_std = math.sqrt(sum((acc - mean) ** 2 for acc in a.per_episode) / 4)
    assert a.ci95 == pytest.approx(1.96 * sample_std / math.sqrt(5))
    t = evaluate(net, data, ways=3, shots=1, queries=2, episodes=2, config=config, transductive=True)
    assert t.transductive


def test_base_model_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    net = small_net()
    torch.nn.init.normal_(net.meta_head.weight)
    card = {"kind": "base_model", "backbone": {"name": "conv4", "filters": 8}, "channels": 1,
            "image_size": 28, "meta_ways": 5, "base_classes": list("abcdefg"),
            "normalization": {"mean": [0.9], "std": [0.3]}, "algorithm": "mtl-reptile"}
    save_base_model(tmp_path / "ckpt", net, card)
    loaded, loaded_card = load_base_model(tmp_path / "ckpt")
    for (k, v), (k2, v2) in zip(net.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    assert loaded_card["algorithm"] == "mtl-reptile" and "weights_sha256" in loaded_card
    assert not list((tmp_path / "ckpt").glob("*.tmp"))


def test_classifier_checkpoint_round_trip(tmp_path: Path) -> None:
    net = small_net()
    x, y = some_images(3, 2)
    clf = adapt(net, x, y, class_names=["a", "b", "c"], config=AdaptConfig(steps=3, lr=0.1))
    save_classifier(tmp_path / "clf", clf, {"backbone": {"name": "conv4", "filters": 8}, "channels": 1,
                                             "image_size": 28})
    loaded, card = load_classifier(tmp_path / "clf")
    assert loaded.labels == ["a", "b", "c"] and card["kind"] == "classifier"
    torch.testing.assert_close(loaded.predict_proba(x), clf.predict_proba(x))


def test_a_pickle_renamed_to_safetensors_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    (folder / "model.json").write_text('{"kind": "base_model"}')
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nowhere")


def test_divergence_is_an_error_not_a_nan_classifier() -> None:
    net = small_net()
    x, y = some_images(5, 3)
    with pytest.raises(ConfigError, match="diverged.*lower the learning rate"):
        adapt(net, x, y, config=AdaptConfig(steps=60, lr=50.0, head_init="zeros", bn_stats="frozen"))


def test_fit_classifier_measures_a_holdout_then_trains_on_every_image() -> None:
    """The service's two passes in one pure function: the holdout's predictions come from a
    model that never saw it, the final model is exactly `adapt` on every image, and progress
    counts both passes as one run."""
    net = small_net()
    x, y = some_images(3, 6)
    config = AdaptConfig(steps=4, lr=0.05, batch_size=5, min_epochs=2)
    holdout = [0, 7, 14]
    seen: list[tuple[int, int]] = []
    phases: list[str] = []
    final, predicted = fit_classifier(
        net, x, y, class_names=["a", "b", "c"], config=config, seed=3, holdout=holdout,
        progress=lambda step, total, _loss: seen.append((step, total)), on_phase=phases.append)
    total = config.steps_for(15) + config.steps_for(18)
    assert phases == ["holdout_pass", "final_pass"]
    assert [s for s, _ in seen] == list(range(1, total + 1)) and {t for _, t in seen} == {total}
    train = [i for i in range(18) if i not in holdout]
    first = adapt(net, x[train], y[train], class_names=["a", "b", "c"], config=config, seed=3)
    probs = first.predict_proba(x[holdout])
    assert predicted is not None
    assert predicted.labels == probs.argmax(1).tolist()
    assert predicted.probabilities == [round(p, 4) for p in probs.max(1).values.tolist()]
    alone = adapt(net, x, y, class_names=["a", "b", "c"], config=config, seed=3)
    for p, q in zip(final.parameters(), alone.parameters(), strict=True):
        assert torch.equal(p, q)
    # Without a holdout: one pass, no predictions.
    _, none = fit_classifier(net, x, y, class_names=["a", "b", "c"], config=config, seed=3)
    assert none is None
