"""The validation splits tuning and Table 1 share: always classes held out of the base classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.splits import base_and_validation
from benchmarks.table1 import PROFILES, load_splits
from models.errors import ConfigError


def test_omniglot_validation_split_is_the_one_past_tuning_files_used(shared_data: Path) -> None:
    held = base_and_validation("omniglot")
    # Pinned: benchmarks/results/tuning-omniglot*.jsonl were measured on exactly these alphabets
    # (160 validation characters, 804 base characters).
    assert sorted({n.split("/")[0] for n in held.validation.class_names}) == [
        "Anglo-Saxon_Futhorc", "Blackfoot_(Canadian_Aboriginal_Syllabics)", "Braille", "Grantha",
        "Hebrew", "Latin"]
    assert (held.base.num_classes, held.validation.num_classes) == (804, 160)
    # Table 1's validated profiles validate on the very classes tuning chose settings on.
    splits = load_splits("omniglot", PROFILES[("omniglot", "fair")])
    assert splits.validation.class_names == held.validation.class_names
    assert splits.base.class_names == held.base.class_names
    rotated = load_splits("omniglot", PROFILES[("omniglot", "builtin")])
    assert rotated.base.num_classes == 4 * 804 and rotated.base_text.endswith("4 rotations: 3216 classes")


def test_miniimagenet_validation_classes_come_from_train_never_val(shared_data: Path) -> None:
    root = shared_data / "miniimagenet-lite"
    train = {p.name for p in (root / "train").iterdir() if p.is_dir()}
    unseen = {p.name for s in ("val", "test") for p in (root / s).iterdir() if p.is_dir()}
    held = base_and_validation("miniimagenet-lite")
    base, val = held.base, held.validation
    assert (base.num_classes, val.num_classes) == (48, 16)
    assert set(base.class_names) | set(val.class_names) == train
    assert not set(base.class_names) & set(val.class_names)
    # Table 1's unseen classes (val + test) are used for neither.
    assert not (set(base.class_names) | set(val.class_names)) & unseen
    assert val.class_counts() == [120] * 16
    again = base_and_validation("miniimagenet-lite", 16).validation
    other = base_and_validation("miniimagenet-lite", 10, seed=1).validation
    assert again.class_names == val.class_names
    assert other.num_classes == 10 and set(other.class_names) != set(val.class_names)
    with pytest.raises(ConfigError, match="cannot hold out 63 of the 64 class groups"):
        base_and_validation("miniimagenet-lite", 63)


def test_vinyals_validation_is_its_val_split_in_grey_or_rgb(shared_data: Path) -> None:
    held = base_and_validation("omniglot-vinyals", image_size=14, channels=3)
    assert (held.base.num_classes, held.validation.num_classes) == (4112, 688)
    assert held.base.images.shape[1:] == (3, 14, 14)
    images = held.validation.images
    assert (images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all()
    with pytest.raises(ConfigError, match="nothing can be held out"):
        base_and_validation("omniglot-vinyals", 6)
    with pytest.raises(ConfigError, match="unknown data set 'cifar'"):
        base_and_validation("cifar")



def test_the_ravi_split_trains_on_all_train_classes_validates_on_val_scores_on_test(shared_data: Path) -> None:
    """The built-in natural model's split (issue 27): base = every train class, validation = the
    val split, Table 1's unseen classes = the test split; pairwise disjoint."""
    from benchmarks.table1 import PROFILES, load_splits

    root = shared_data / "miniimagenet-lite"
    names = {s: {p.name for p in (root / s).iterdir() if p.is_dir()} for s in ("train", "val", "test")}
    splits = load_splits("miniimagenet-lite-ravi", PROFILES[("miniimagenet-lite-ravi", "builtin-mtl")])
    assert set(splits.base.class_names) == names["train"]
    assert set(splits.validation.class_names) == names["val"]
    assert set(splits.unseen.class_names) == names["test"]
    assert (splits.base.num_classes, splits.validation.num_classes, splits.unseen.num_classes) == (64, 16, 20)
    with pytest.raises(ConfigError, match="nothing can be held out"):
        base_and_validation("miniimagenet-lite-ravi", 4)
