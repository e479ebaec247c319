"""Class-indexed image sets, their loaders, and the seeded episode sampler.

Images are held in memory as one uint8 tensor (N, C, H, W); models take floats in [0, 1] and
normalise internally, so the same tensors feed pretraining, evaluation and the service.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from models.errors import ConfigError, DatasetError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEFAULT_DATA_ROOT = "../shared/data"


def data_root() -> Path:
    """Where the shared data sets live: `MTL_DATA_ROOT`, default `../shared/data`."""
    return Path(os.environ.get("MTL_DATA_ROOT", DEFAULT_DATA_ROOT))


@dataclass
class ImageSet:
    """Images of several classes: `images[i]` belongs to class `labels[i]`, named `class_names`."""

    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)
    class_names: list[str]
    source: str = ""
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def subset(self, classes: Sequence[int]) -> ImageSet:
        """The images of `classes`, relabelled 0..len(classes)-1 in the order given."""
        remap = torch.full((self.num_classes,), -1, dtype=torch.long)
        remap[torch.as_tensor(list(classes), dtype=torch.long)] = torch.arange(len(classes))
        new_labels = remap[self.labels]
        keep = new_labels >= 0
        return ImageSet(
            images=self.images[keep],
            labels=new_labels[keep],
            class_names=[self.class_names[c] for c in classes],
            source=self.source,
        )

    def fingerprint(self) -> str:
        """sha256 over class names, labels and pixels: identifies the exact training data."""
        h = hashlib.sha256()
        h.update("\n".join(self.class_names).encode())
        h.update(self.labels.numpy().tobytes())
        h.update(self.images.contiguous().numpy().tobytes())
        return h.hexdigest()


def class_group(name: str) -> str:
    """The group a class belongs to: its alphabet for Omniglot's `Alphabet/characterNN` names, else
    the class itself. Validation classes are held out by group, so no alphabet straddles both sides."""
    return name.split("/")[0]


def hold_out_groups(data: ImageSet, count: int, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(base, validation): a seeded choice of `count` class groups (alphabets, or classes) held out.

    Groups are chosen among their sorted names, so the split depends only on the class names and
    the seed, not on file order.
    """
    groups = sorted({class_group(n) for n in data.class_names})
    if not 1 <= count <= len(groups) - 1 or data.num_classes - count < 2:
        raise ConfigError(f"cannot hold out {count} of the {len(groups)} class groups "
                          f"({', '.join(groups[:3])}, ...) and keep at least 2 base classes")
    held = set(np.random.default_rng(seed).choice(groups, size=count, replace=False).tolist())
    val = [i for i, n in enumerate(data.class_names) if class_group(n) in held]
    base = [i for i, n in enumerate(data.class_names) if class_group(n) not in held]
    if len(val) < 2:
        raise ConfigError(f"{count} held-out group(s) hold {len(val)} class; validation needs at least 2")
    return data.subset(base), data.subset(val)


def with_rotations(data: ImageSet) -> ImageSet:
    """Every class four times, turned by 0, 90, 180 and 270 degrees, each turn a class of its own
    (`name/rot090`...): the Omniglot practice of Vinyals et al. and Snell et al. A turned
    character is usually a different symbol, so it is a new class, not a new image of the old one.
    """
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    names: list[str] = []
    for quarters in range(4):
        images.append(torch.rot90(data.images, k=quarters, dims=(-2, -1)))
        labels.append(data.labels + quarters * data.num_classes)
        names.extend(f"{n}/rot{quarters * 90:03d}" for n in data.class_names)
    return ImageSet(images=torch.cat(images).contiguous(), labels=torch.cat(labels), class_names=names,
                    source=f"{data.source} (x4 rotations)")


def augment_images(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random horizontal flip and a random translation of up to 4 pixels (edges replicated),
    drawn for each image of an (N, C, H, W) batch; returns a new tensor of x's dtype.

    Each image is two index_selects of its shifted rows and columns (clamped: the replicated
    edge) rather than one gather over a padded batch, whose (N, C, H, W) index tensors cost 4x
    as much (9 ms against 2.5 ms for 64 images at 84x84 on one core); the output is identical.
    """
    n, _, h, w = x.shape
    flip = (torch.rand(n, generator=gen) < 0.5).tolist()
    dy, dx = torch.randint(0, 9, (2, n), generator=gen).tolist()
    # Row (column) indices of the crop at each of the 9 offsets: out[r] = x[clamp(r + d - 4)].
    rows = (torch.arange(h) + torch.arange(9)[:, None] - 4).clamp_(0, h - 1).to(x.device)
    cols = (torch.arange(w) + torch.arange(9)[:, None] - 4).clamp_(0, w - 1).to(x.device)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    for i in range(n):
        image = x[i].flip(2) if flip[i] else x[i]
        torch.index_select(image.index_select(1, rows[dy[i]]), 2, cols[dx[i]], out=out[i])
    return out


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) to float in [0, 1], on the same device."""
    return images.float().div_(255.0)


# ----------------------------------------------------------------------------- decoding


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


def concat(sets: Sequence[ImageSet]) -> ImageSet:
    """The classes of several image sets as one (e.g. miniImageNet val + test, 36 unseen classes)."""
    if len(sets) == 1:
        return sets[0]
    shapes = {tuple(s.images.shape[1:]) for s in sets}
    if len(shapes) != 1:
        raise DatasetError(f"cannot combine image sets of different shapes: {sorted(shapes)}")
    names: list[str] = []
    labels = []
    for s in sets:
        labels.append(s.labels + len(names))
        names.extend(s.class_names)
    if len(set(names)) != len(names):
        raise DatasetError("the combined data sets share class names")
    return ImageSet(
        images=torch.cat([s.images for s in sets]),
        labels=torch.cat(labels),
        class_names=names,
        source="+".join(s.source for s in sets),
        rejected=[r for s in sets for r in s.rejected],
    )


# ----------------------------------------------------------------------------- episodes


@dataclass(frozen=True)
class Episode:
    """One N-way task: indices into an ImageSet and labels 0..N-1."""

    classes: np.ndarray  # (N,) dataset class ids
    support: torch.Tensor  # (N*K,) image indices
    support_labels: torch.Tensor
    query: torch.Tensor  # (N*Q,) image indices
    query_labels: torch.Tensor

    @property
    def all_indices(self) -> torch.Tensor:
        return torch.cat([self.support, self.query])


class EpisodeSampler:
    """Seeded N-way K-shot Q-query episodes; the same seed gives the same episodes for every method."""

    def __init__(
        self,
        labels: torch.Tensor,
        *,
        ways: int,
        shots: int,
        queries: int,
        replacement: bool = False,
        seed: int | Sequence[int] = 0,
    ) -> None:
        labels_np = labels.cpu().numpy()
        num_classes = int(labels_np.max()) + 1 if labels_np.size else 0
        self.by_class = [np.flatnonzero(labels_np == c) for c in range(num_classes)]
        if ways < 2:
            raise ConfigError(f"ways must be at least 2, got {ways}")
        if shots < 1 or queries < 0:
            raise ConfigError(f"shots must be >= 1 and queries >= 0, got {shots} and {queries}")
        if not replacement and ways > num_classes:
            raise ConfigError(f"{ways}-way episodes need {ways} classes; the data has {num_classes}")
        smallest = min(len(ix) for ix in self.by_class)
        if shots + queries > smallest:
            raise ConfigError(
                f"{shots} shots + {queries} queries need {shots + queries} images per class; "
                f"the smallest class has {smallest}"
            )
        self.ways, self.shots, self.queries = ways, shots, queries
        self.replacement = replacement
        self.rng = np.random.default_rng(seed)

    def sample(self) -> Episode:
        classes = self.rng.choice(len(self.by_class), size=self.ways, replace=self.replacement)
        support: list[np.ndarray] = []
        query: list[np.ndarray] = []
        for c in classes:
            picked = self.rng.choice(self.by_class[c], size=self.shots + self.queries, replace=False)
            support.append(picked[: self.shots])
            query.append(picked[self.shots :])
        arange = np.arange(self.ways)
        return Episode(
            classes=classes,
            support=torch.from_numpy(np.concatenate(support)),
            support_labels=torch.from_numpy(np.repeat(arange, self.shots)),
            query=torch.from_numpy(np.concatenate(query)),
            query_labels=torch.from_numpy(np.repeat(arange, self.queries)),
        )

    def get_state(self) -> dict[str, Any]:
        return dict(self.rng.bit_generator.state)

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state
