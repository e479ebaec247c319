"""Loaded classifiers in the API process: an LRU cache bounded in classifiers and in bytes,
reloaded when a checkpoint changes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.infra import metrics
from app.infra.errors import ServiceError


def classifier_bytes(clf: Any) -> int:
    """What a loaded classifier holds: the bytes of its tensors (weights and buffers)."""
    return sum(t.numel() * t.element_size() for t in clf.state_dict().values())


@dataclass
class _Entry:
    stamp: float
    classifier: Any
    card: dict[str, Any]
    nbytes: int


class ClassifierCache:
    """At most `size` classifiers and `max_bytes` of their tensors loaded at once (None: no byte
    bound), the least recently used dropped first; the one just loaded always stays, even alone
    over the bound. A classifier is reloaded when its card (`model.json`, written last by the
    worker) changes. `hits`, `misses` and `evictions` count since start (`stats()`), and the
    same counts go to the process's metrics: this class is the one place they are counted."""

    def __init__(self, *, size: int, max_bytes: int | None = None, device: str = "cpu") -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.device = device
        self._loaded: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def peek(self, classifier_id: str, directory: Path) -> tuple[Any, dict[str, Any]] | None:
        """The classifier and its card when already loaded and current (a hit), else None (and
        nothing loaded, nothing counted): cheap enough for the event loop."""
        try:
            stamp = (directory / "model.json").stat().st_mtime
        except OSError:
            return None
        with self._lock:
            hit = self._loaded.get(classifier_id)
            if hit is None or hit.stamp != stamp:
                return None
            self._loaded.move_to_end(classifier_id)
            self.hits += 1
        metrics.count_predict_cache(True)
        return hit.classifier, hit.card

    def get(self, classifier_id: str, directory: Path) -> tuple[Any, dict[str, Any]]:
        """The classifier saved in `directory` and its card, loaded once (torch is imported here,
        in a worker thread, never at start-up)."""
        from models.checkpoint import load_classifier

        try:
            stamp = (directory / "model.json").stat().st_mtime
        except FileNotFoundError:
            # Deleted since the request found it ready (the delete route removes the folder).
            raise ServiceError(f"classifier {classifier_id} not found", 404) from None
        with self._lock:
            hit = self._loaded.get(classifier_id)
            current = hit is not None and hit.stamp == stamp
            if current:
                self._loaded.move_to_end(classifier_id)
            self.hits += current
            self.misses += not current
        metrics.count_predict_cache(current)
        if current and hit is not None:
            return hit.classifier, hit.card
        clf, card = load_classifier(directory, device=self.device)
        entry = _Entry(stamp, clf, card, classifier_bytes(clf))
        evicted = 0
        with self._lock:
            self._drop(classifier_id)  # an older version, or a concurrent load of this one
            self._loaded[classifier_id] = entry
            self.bytes += entry.nbytes
            while len(self._loaded) > 1 and (
                len(self._loaded) > self.size
                or (self.max_bytes is not None and self.bytes > self.max_bytes)
            ):
                self._drop(next(iter(self._loaded)))
                evicted += 1
            self.evictions += evicted
            nbytes, loaded = self.bytes, len(self._loaded)
        metrics.observe_predict_cache(nbytes, loaded, evicted)
        return clf, card

    def _drop(self, classifier_id: str) -> None:
        entry = self._loaded.pop(classifier_id, None)
        if entry is not None:
            self.bytes -= entry.nbytes

    def evict(self, classifier_id: str) -> None:
        with self._lock:
            self._drop(classifier_id)
            nbytes, count = self.bytes, len(self._loaded)
        metrics.observe_predict_cache(nbytes, count, 0)

    def ids(self) -> list[str]:
        """The loaded classifiers' ids, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def stats(self) -> dict[str, int | None]:
        """Counts for metrics: what is loaded against the bounds, and hits, misses and
        evictions since start."""
        with self._lock:
            return {"classifiers": len(self._loaded), "bytes": self.bytes,
                    "max_classifiers": self.size, "max_bytes": self.max_bytes, "hits": self.hits,
                    "misses": self.misses, "evictions": self.evictions}
