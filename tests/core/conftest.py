"""Fixtures for the core tests. Real data comes from MTL_DATA_ROOT; missing data fails loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.data import ImageSet, data_root
from models.loaders import load_dataset

REPO = Path(__file__).resolve().parents[2]


def _root() -> Path:
    root = data_root()
    if not root.is_absolute():
        root = (REPO / root).resolve()
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = _root()
    if not (root / "omniglot" / "images_background.npz").exists():
        pytest.fail(
            f"real data not found under {root}: set MTL_DATA_ROOT to the folder holding omniglot/ "
            "and miniimagenet-lite/ (see ../shared/data/README.md)",
            pytrace=False,
        )
    return root


@pytest.fixture(scope="session")
def omniglot_background(shared_data: Path) -> ImageSet:
    return load_dataset(shared_data / "omniglot" / "images_background.npz", image_size=28, channels=1)


@pytest.fixture(scope="session")
def omniglot_evaluation(shared_data: Path) -> ImageSet:
    return load_dataset(shared_data / "omniglot" / "images_evaluation.npz", image_size=28, channels=1)
