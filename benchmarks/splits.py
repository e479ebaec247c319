"""Base and validation classes, the one definition that tuning (benchmarks/tune.py) and Table 1's
validated profiles (benchmarks/table1/) share, so that a setting tuned on some classes is
checked on the same ones.

Validation classes are always held out of the base (training) classes and never taken from the
classes Table 1 scores on:
- Omniglot: `held_out` whole background alphabets (seeded choice among their sorted names).
  Past tuning files were made with 6 alphabets and seed 0: keep that default.
- Omniglot, Vinyals split: its `train` split is the base classes, its `val` split the validation
  classes (its `test` split is Table 1's unseen classes); nothing to choose.
- miniImageNet-lite: `held_out` of the 64 `train/` classes; `val/` and `test/` are never used
  (they are Table 1's unseen classes, as in the paper).
- miniImageNet-lite, Ravi split ("miniimagenet-lite-ravi"): all 64 `train/` classes are the base,
  `val/` the validation classes and `test/` the unseen ones, as the few-shot literature splits it
  (the built-in `natural` model's setting, issue 27); nothing to choose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from models.errors import ConfigError

if TYPE_CHECKING:
    from models.data import ImageSet

DATASETS = ("omniglot", "omniglot-vinyals", "miniimagenet-lite", "miniimagenet-lite-ravi")
# What each data set holds out unless told otherwise (the Vinyals val split is fixed).
DEFAULT_HELD_OUT = {"omniglot": 6, "miniimagenet-lite": 16}
NATIVE = {"omniglot": (28, 1), "omniglot-vinyals": (28, 1), "miniimagenet-lite": (84, 3),
          "miniimagenet-lite-ravi": (84, 3)}


@dataclass
class HeldOut:
    """Base classes to pretrain on and validation classes to choose settings on."""

    base: ImageSet
    validation: ImageSet
    base_text: str
    validation_text: str


def base_and_validation(dataset: str, held_out: int | None = None, *, seed: int = 0,
                        image_size: int | None = None, channels: int | None = None) -> HeldOut:
    """The base and validation classes of `dataset` (see the module docstring), loaded at
    `image_size` x `image_size` with `channels` channels (each data set's own by default)."""
    # torch is imported here, not when the module is: DATASETS serves argument parsers.
    from models.data import data_root, hold_out_groups
    from models.loaders import load_dataset, load_omniglot_vinyals

    if dataset not in DATASETS:
        raise ConfigError(f"unknown data set {dataset!r}; known: {', '.join(DATASETS)}")
    size, chans = NATIVE[dataset]
    size, chans = image_size or size, channels or chans
    root = data_root()
    if dataset == "omniglot-vinyals":
        if held_out is not None:
            raise ConfigError("the Omniglot Vinyals split's validation classes are its val split; "
                              "nothing can be held out of it")
        base, val = (load_omniglot_vinyals(root / "omniglot", name, image_size=size, channels=chans)
                     for name in ("train", "val"))
        return HeldOut(base, val, f"Vinyals train split ({base.num_classes} classes)",
                       f"Vinyals val split ({val.num_classes} classes)")
    if dataset == "miniimagenet-lite-ravi":
        if held_out is not None:
            raise ConfigError("the Ravi split's validation classes are its val split; nothing can be "
                              "held out of it")
        base, val = (load_dataset(root / "miniimagenet-lite" / name, image_size=size, channels=chans)
                     for name in ("train", "val"))
        return HeldOut(base, val, f"miniImageNet-lite train ({base.num_classes} classes)",
                       f"miniImageNet-lite val ({val.num_classes} classes)")
    count = DEFAULT_HELD_OUT[dataset] if held_out is None else held_out
    if dataset == "omniglot":
        data = load_dataset(root / "omniglot" / "images_background.npz", image_size=size, channels=chans)
        base, val = hold_out_groups(data, count, seed)
        return HeldOut(base, val, f"Omniglot background alphabets minus the {count} validation alphabets "
                       f"({base.num_classes} characters)",
                       f"the {count} held-out background alphabets ({val.num_classes} characters)")
    data = load_dataset(root / "miniimagenet-lite" / "train", image_size=size, channels=chans)
    base, val = hold_out_groups(data, count, seed)
    return HeldOut(base, val, f"miniImageNet-lite train minus {count} held-out classes ({base.num_classes})",
                   f"{count} held-out train classes ({val.num_classes})")
