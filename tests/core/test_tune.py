"""The tuning script's validation splits: always classes held out of the base classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.tune import mini_split, omniglot_split
from models.errors import ConfigError


def test_omniglot_validation_split_is_the_one_past_tuning_files_used(shared_data: Path) -> None:
    base, val = omniglot_split(6, 0)
    # Pinned: benchmarks/results/tuning-omniglot*.jsonl were measured on exactly these alphabets
    # (160 validation characters, 804 base characters).
    assert sorted({n.split("/")[0] for n in val.class_names}) == [
        "Anglo-Saxon_Futhorc", "Blackfoot_(Canadian_Aboriginal_Syllabics)", "Braille", "Grantha",
        "Hebrew", "Latin"]
    assert (base.num_classes, val.num_classes) == (804, 160)


def test_miniimagenet_validation_classes_come_from_train_never_val(shared_data: Path) -> None:
    root = shared_data / "miniimagenet-lite"
    train = {p.name for p in (root / "train").iterdir() if p.is_dir()}
    unseen = {p.name for s in ("val", "test") for p in (root / s).iterdir() if p.is_dir()}
    base, val = mini_split(val_classes=16, seed=0)
    assert (base.num_classes, val.num_classes) == (48, 16)
    assert set(base.class_names) | set(val.class_names) == train
    assert not set(base.class_names) & set(val.class_names)
    # Table 1's unseen classes (val + test) are used for neither.
    assert not (set(base.class_names) | set(val.class_names)) & unseen
    assert val.class_counts() == [120] * 16
    again, other = mini_split(val_classes=16, seed=0)[1], mini_split(val_classes=10, seed=1)[1]
    assert again.class_names == val.class_names
    assert other.num_classes == 10 and set(other.class_names) != set(val.class_names)
    with pytest.raises(ConfigError, match="--val-classes must be between 2 and 62"):
        mini_split(val_classes=63)
