"""Reading images from disk or bytes: one file (`decode_image`, shared with the service), a folder
of class folders, Omniglot's npz files and the Vinyals split files."""

from __future__ import annotations

import csv
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from models.data import ImageSet
from models.errors import ConfigError, DatasetError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def decode_image(source: bytes | Path, *, channels: int, image_size: int) -> np.ndarray:
    """Decode one image file to uint8 (C, H, W), converted to `channels` and resized square.

    Raises `DatasetError` with the reason when the file is not a decodable image.
    """
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as opened:
            opened.load()
            img: Image.Image = opened
            # Transparent pixels become white, as they look on screen, instead of black.
            if img.mode in ("RGBA", "LA", "P"):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=3.0)
            arr = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"image too large: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = "not a decodable image" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise DatasetError(reason or "not a decodable image") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _sorted_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _find_class_folders(root: Path) -> list[tuple[str, Path]]:
    """Class folders under root: `root/<class>/*.img`, or two levels deep as in the official
    Omniglot layout (`images_background/<Alphabet>/characterNN/*.png`), named `Alphabet/characterNN`."""
    top = _sorted_dirs(root)
    if not top:
        return []
    if any(_is_image_file(f) for d in top for f in d.iterdir()):
        return [(d.name, d) for d in top]
    nested = [(f"{d.name}/{c.name}", c) for d in top for c in _sorted_dirs(d)]
    return nested


def load_image_folder(
    root: Path | str, *, image_size: int, channels: int, max_per_class: int | None = None
) -> ImageSet:
    """Load a folder of class subfolders (or the two-level Omniglot layout)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"data set not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"not a folder of class subfolders: {root}")
    classes = _find_class_folders(root)
    files: list[tuple[int, Path]] = []
    names: list[str] = []
    for name, folder in classes:
        members = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
        if max_per_class is not None:
            members = members[:max_per_class]
        names.append(name)
        files.extend((len(names) - 1, f) for f in members)
    if len(names) < 2:
        raise DatasetError(
            f"{root} has {len(names)} class folder(s); at least 2 class subfolders with images are needed"
        )

    def work(item: tuple[int, Path]) -> tuple[int, Path, np.ndarray | str]:
        label, path = item
        try:
            return label, path, decode_image(path, channels=channels, image_size=image_size)
        except DatasetError as exc:
            return label, path, str(exc)

    # PIL releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        decoded = list(pool.map(work, files))
    arrays = [a for _, _, a in decoded if isinstance(a, np.ndarray)]
    labels = [lbl for lbl, _, a in decoded if isinstance(a, np.ndarray)]
    rejected = [(str(p.relative_to(root)), a) for _, p, a in decoded if isinstance(a, str)]
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
    empty = [names[i] for i in range(len(names)) if counts[i] == 0]
    if empty:
        raise DatasetError(f"class {empty[0]!r} in {root} has no decodable image")
    return ImageSet(
        images=torch.from_numpy(np.stack(arrays)),
        labels=torch.tensor(labels, dtype=torch.long),
        class_names=names,
        source=str(root),
        rejected=rejected,
    )


def _omniglot_class_names(npz_path: Path, count: int) -> list[str]:
    """`Alphabet/characterNN` names from alphabets.csv beside the npz (rows of the file's set, in
    id order), else `character<index>`."""
    csv_path = npz_path.parent / "alphabets.csv"
    set_name = npz_path.stem.removeprefix("images_")
    names: list[str] = []
    if csv_path.exists():
        with csv_path.open() as fh:
            rows = [r for r in csv.DictReader(fh) if r["set"] == set_name]
        for row in sorted(rows, key=lambda r: int(r["first_character_id"])):
            first, last = int(row["first_character_id"]), int(row["last_character_id"])
            names.extend(f"{row['alphabet']}/character{i:02d}" for i in range(1, last - first + 2))
    if len(names) != count:
        names = [f"character{i + 1:04d}" for i in range(count)]
    return names


def load_omniglot_npz(path: Path | str, *, image_size: int = 28) -> ImageSet:
    """Load `images_background.npz` or `images_evaluation.npz` (True = white paper)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"data set not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            raw = data["images"]
    except (ValueError, KeyError, OSError) as exc:
        raise DatasetError(f"{path} is not an Omniglot npz file with an 'images' array: {exc}") from None
    if raw.ndim != 4:
        raise DatasetError(f"{path}: expected images of shape (characters, drawers, H, W), got {raw.shape}")
    chars, drawers, h, w = raw.shape
    x = torch.from_numpy(raw.reshape(chars * drawers, 1, h, w).astype(np.float32))
    if (h, w) != (image_size, image_size):
        # Area averaging keeps thin strokes visible as grey instead of dropping them.
        x = F.interpolate(x, size=(image_size, image_size), mode="area")
    images = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    labels = torch.arange(chars).repeat_interleave(drawers)
    return ImageSet(
        images=images,
        labels=labels,
        class_names=_omniglot_class_names(path, chars),
        source=str(path),
    )


VINYALS_SPLITS = ("train", "val", "trainval", "test")


def _parse_vinyals_line(line: str, where: str) -> tuple[str, int]:
    """`Alphabet/characterNN/rotDDD` -> (`Alphabet/characterNN`, quarter turns)."""
    parts = line.split("/")
    if len(parts) != 3 or not parts[2].startswith("rot") or not parts[2][3:].isdigit():
        raise DatasetError(f"{where}: expected 'Alphabet/characterNN/rotDDD', got {line!r}")
    degrees = int(parts[2][3:])
    if degrees % 90:
        raise DatasetError(f"{where}: rotation must be a multiple of 90 degrees, got {degrees}")
    return f"{parts[0]}/{parts[1]}", degrees // 90


def load_omniglot_vinyals(root: Path, split: str, *, image_size: int = 28, channels: int = 1) -> ImageSet:
    """One split of Vinyals et al.'s Omniglot split (as Prototypical Networks use it): every line
    of `root/splits_vinyals/<split>.txt`, `Alphabet/characterNN/rotDDD`, is one class, named by the
    line, holding that character's 20 drawings rotated by DDD degrees.

    `root` is the Omniglot folder holding `images_background.npz`, `images_evaluation.npz`,
    `alphabets.csv` and `splits_vinyals/`. The split mixes characters of both npz files. With
    `channels` 3 the grey drawings are repeated as RGB (for a backbone built for photos).
    """
    root = Path(root)
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    if split not in VINYALS_SPLITS:
        raise DatasetError(f"unknown Omniglot Vinyals split {split!r}; known: {', '.join(VINYALS_SPLITS)}")
    split_path = root / "splits_vinyals" / f"{split}.txt"
    if not split_path.exists():
        raise DatasetError(f"Omniglot Vinyals split file not found: {split_path}")
    if not (root / "alphabets.csv").exists():
        # Without it the npz classes have no Alphabet/characterNN names to match the lines to.
        raise DatasetError(f"{root / 'alphabets.csv'} not found: it names the characters the split lists")
    lines = [ln.strip() for ln in split_path.read_text().splitlines()]
    classes = [_parse_vinyals_line(ln, f"{split_path}:{i + 1}") for i, ln in enumerate(lines) if ln]
    if not classes:
        raise DatasetError(f"{split_path} lists no classes")
    names = [ln for ln in lines if ln]
    if len(set(names)) != len(names):
        raise DatasetError(f"{split_path} lists a class twice")

    # Each character's images, looked up by name across both files.
    by_name: dict[str, torch.Tensor] = {}
    for file in ("images_background.npz", "images_evaluation.npz"):
        data = load_omniglot_npz(root / file, image_size=image_size)
        order = torch.argsort(data.labels, stable=True)
        chunks = torch.split(data.images[order], data.class_counts())
        by_name.update(zip(data.class_names, chunks, strict=True))
    missing = [c for c, _ in classes if c not in by_name]
    if missing:
        raise DatasetError(f"{split_path} lists {len(missing)} character(s) not in the Omniglot npz files "
                           f"of {root}, e.g. {missing[0]!r}")

    # torch.rot90 with k > 0 over (H, W) turns counter-clockwise, as PIL's Image.rotate(DDD) does
    # in the Prototypical Networks loader (protonets/data/omniglot.py, rotate_image). They rotate
    # the 105x105 drawing before resizing, we the resized image: area averaging's bins are
    # symmetric, so both orders give the same pixels, and ours rotates 4x fewer pixels.
    images = [torch.rot90(by_name[char], k=quarters, dims=(-2, -1)) for char, quarters in classes]
    counts = torch.tensor([len(x) for x in images])
    return ImageSet(
        images=torch.cat(images).expand(-1, channels, -1, -1).contiguous(),
        labels=torch.arange(len(images)).repeat_interleave(counts),
        class_names=names,
        source=f"{split_path} ({split})",
    )


def load_dataset(
    path: Path | str, *, image_size: int, channels: int, max_per_class: int | None = None
) -> ImageSet:
    """Load an Omniglot `.npz` file or a folder of class subfolders."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"data set not found: {path}")
    if path.suffix == ".npz":
        data = load_omniglot_npz(path, image_size=image_size)
        if channels == 3:
            data.images = data.images.expand(-1, 3, -1, -1).contiguous()
        return data
    return load_image_folder(path, image_size=image_size, channels=channels, max_per_class=max_per_class)
