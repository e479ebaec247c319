"""Content-addressed image store: `<data_dir>/images/ab/abcdef...` named by the bytes' sha256.

A stored file is shared by every dataset row with its hash, whatever the tenant, so removing one
must not race a dataset that is being stored with the same bytes: the remover's "is it still
used?" query cannot see rows that have not committed yet. Two rules close that window (across
the API processes that share the data folder):
- removal checks and unlinks under `locked()` (`delete_unused`);
- a dataset that reused a stored file keeps its own copy until its rows have committed, then,
  under the same lock, puts back any file a removal took in between (`restore`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put_file(self, source: Path) -> tuple[str, bool]:
        """Move the file `source` into the store (hashed in chunks, never read whole); returns
        its sha256 and whether this call created the stored file. `source` must be on the
        store's filesystem (the data directory). When the store already held these bytes,
        `source` is left where it is: keep it until the rows referencing the hash commit, then
        call `restore`."""
        digest = hashlib.sha256()
        with source.open("rb") as fh:
            while chunk := fh.read(1024 * 1024):
                digest.update(chunk)
        name = digest.hexdigest()
        target = self.path(name)
        if target.exists():
            return name, False
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return name, True

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes on this data folder (an advisory lock on a file beside
        the store, so that the store holds only images)."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with self.root.with_name(self.root.name + ".lock").open("a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def delete_unused(self, digests: set[str], still_used: Callable[[set[str]], set[str]]) -> None:
        """Unlink the files of `digests` that `still_used` (a query over committed rows) does
        not name, the query and the unlinks under the lock."""
        if not digests:
            return
        with self.locked():
            for sha256 in digests - still_used(digests):
                self.path(sha256).unlink(missing_ok=True)

    def restore(self, copies: Mapping[str, Path]) -> None:
        """After the rows referencing these hashes committed: put back, from the caller's copy,
        any stored file that a concurrent `delete_unused` removed before it could see them."""
        with self.locked():
            for sha256, source in copies.items():
                target = self.path(sha256)
                if not target.exists() and source.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(source, target)
