"""Content-addressed image store: `<data_dir>/images/ab/abcdef...` named by the bytes' sha256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put_file(self, source: Path) -> tuple[str, bool]:
        """Move the file `source` into the store (hashed in chunks, never read whole); returns
        its sha256 and whether this call created the stored file. `source` is consumed; it must
        be on the store's filesystem (the data directory)."""
        digest = hashlib.sha256()
        with source.open("rb") as fh:
            while chunk := fh.read(1024 * 1024):
                digest.update(chunk)
        name = digest.hexdigest()
        target = self.path(name)
        if target.exists():
            source.unlink(missing_ok=True)
            return name, False
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return name, True

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)
