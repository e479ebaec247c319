"""Loaded classifiers in the API process: a bounded LRU cache, reloaded when a checkpoint changes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any


class ClassifierCache:
    """At most `size` classifiers loaded at once, the least recently used dropped first. A
    classifier is reloaded when its card (`model.json`, written last by the worker) changes."""

    def __init__(self, *, size: int, device: str = "cpu") -> None:
        self.size = size
        self.device = device
        self._loaded: OrderedDict[str, tuple[float, Any, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, classifier_id: str, directory: Path) -> tuple[Any, dict[str, Any]]:
        """The classifier saved in `directory` and its card, loaded once (torch is imported here,
        in a worker thread, never at start-up)."""
        from models.checkpoint import load_classifier

        stamp = (directory / "model.json").stat().st_mtime
        with self._lock:
            hit = self._loaded.get(classifier_id)
            if hit is not None and hit[0] == stamp:
                self._loaded.move_to_end(classifier_id)
                return hit[1], hit[2]
        clf, card = load_classifier(directory, device=self.device)
        with self._lock:
            self._loaded[classifier_id] = (stamp, clf, card)
            self._loaded.move_to_end(classifier_id)
            while len(self._loaded) > self.size:
                self._loaded.popitem(last=False)
        return clf, card

    def evict(self, classifier_id: str) -> None:
        with self._lock:
            self._loaded.pop(classifier_id, None)

    def ids(self) -> list[str]:
        """The loaded classifiers' ids, least recently used first."""
        with self._lock:
            return list(self._loaded)
