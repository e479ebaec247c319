"""The classes a Table 1 run pretrains on, validates on and is scored on, loaded per profile."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.table1.profiles import Profile


@dataclass
class Splits:
    """The classes a Table 1 run pretrains on, validates on (if any) and is scored on."""

    base: Any
    unseen: Any
    validation: Any = None
    base_text: str = ""
    validation_text: str = ""
    cache: dict[str, Any] = field(default_factory=dict)  # derived sets (rotated base classes)


def load_splits(dataset: str, profile: Profile) -> Splits:
    """Base, unseen and (with `holdout_validation`) validation classes: Omniglot
    background/evaluation, Omniglot Vinyals trainval/test, miniImageNet train/val+test or
    train/test (its Ravi split, validated on val); the
    validation classes are benchmarks.splits', the ones tuning chose settings on."""
    from benchmarks.splits import base_and_validation
    from models.data import concat, data_root, with_rotations
    from models.loaders import load_dataset, load_omniglot_vinyals

    root = data_root()
    size, channels = profile.image_size, profile.channels

    def npz_or_folder(*path: str) -> Any:
        return load_dataset(root.joinpath(*path), image_size=size, channels=channels)

    def vinyals(split: str) -> Any:
        return load_omniglot_vinyals(root / "omniglot", split, image_size=size, channels=channels)

    # dataset -> (all its training classes, the classes Table 1 scores on), loaded when needed.
    parts: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "omniglot-vinyals": (lambda: vinyals("trainval"), lambda: vinyals("test")),
        "omniglot": (lambda: npz_or_folder("omniglot", "images_background.npz"),
                     lambda: npz_or_folder("omniglot", "images_evaluation.npz")),
        "miniimagenet-lite": (lambda: npz_or_folder("miniimagenet-lite", "train"),
                              lambda: concat([npz_or_folder("miniimagenet-lite", s) for s in ("val", "test")])),
        "miniimagenet-lite-ravi": (lambda: npz_or_folder("miniimagenet-lite", "train"),
                                   lambda: npz_or_folder("miniimagenet-lite", "test")),
    }
    whole_base, scored = parts[dataset]
    unseen = scored()
    if profile.holdout_validation:
        held = base_and_validation(dataset, image_size=size, channels=channels)
        base, base_text = held.base, held.base_text
        if profile.rotations:
            base = with_rotations(base)
            base_text += f", each in 4 rotations: {base.num_classes} classes"
        return Splits(base, unseen, held.validation, base_text, held.validation_text)
    base = whole_base()
    return Splits(with_rotations(base) if profile.rotations else base, unseen)
