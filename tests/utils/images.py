"""Test data factories: PNG images, zip archives, Omniglot drawings. Shared by the service tests
and anything else that needs small real images (benchmarks may import them)."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """Where the data sets are (MTL_DATA_ROOT, else ../shared/data beside the repository)."""
    return Path(os.environ.get("MTL_DATA_ROOT", REPO.parent / "shared" / "data"))


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def random_png(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    return png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def small_zip(classes: int = 3, per_class: int = 3) -> bytes:
    return zip_bytes({f"set/class{c}/img{i}.png": random_png(c * 100 + i)
                      for c in range(classes) for i in range(per_class)})


_OMNIGLOT: dict[str, np.ndarray] = {}


def omniglot_eval() -> np.ndarray:
    """Omniglot evaluation images, bool (characters, 20, 105, 105), True = paper."""
    if "eval" not in _OMNIGLOT:
        with np.load(data_root() / "omniglot" / "images_evaluation.npz") as data:
            _OMNIGLOT["eval"] = data["images"]
    return _OMNIGLOT["eval"]


def omniglot_png(character: int, drawing: int) -> bytes:
    return png((omniglot_eval()[character, drawing] * 255).astype(np.uint8))


def omniglot_zip(characters: list[int], drawings: range) -> bytes:
    return zip_bytes({f"chars/ch{c}/{d}.png": omniglot_png(c, d)
                      for c in characters for d in drawings})


def photo_zip(classes: int, per_class: int) -> bytes:
    """The first `per_class` photos of the first `classes` miniImageNet-lite test classes (unseen
    by every base model), as a user's archive of JPEG folders."""
    folders = sorted(p for p in (data_root() / "miniimagenet-lite" / "test").iterdir() if p.is_dir())
    return zip_bytes({f"photos/{folder.name}/{photo.name}": photo.read_bytes()
                      for folder in folders[:classes]
                      for photo in sorted(folder.glob("*.jpg"))[:per_class]})
