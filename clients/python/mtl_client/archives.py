"""A folder of class folders as the zip the datasets routes take."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from mtl_client.errors import ClientError


def zip_class_folders(folder: Path, out: IO[bytes]) -> None:
    """Write `folder` as the zip the datasets route takes: its subfolders are the class names.
    Members sit under one enclosing folder (the service strips it), so even a single class keeps
    its name; images are stored as they are (they are compressed already)."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ClientError(f"{folder} has no class subfolders (one folder of images per class)")
    import zipfile

    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for class_dir in classes:
            for file in sorted(class_dir.rglob("*")):
                if file.is_file():
                    zf.write(file, f"{folder.resolve().name}/{file.relative_to(folder)}")
