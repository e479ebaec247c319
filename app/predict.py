"""Predicting in the API process: a bounded LRU cache of loaded classifiers, run off the event loop.

`PredictService.predict` is the one entry point routes call, so a per-classifier micro-batcher
(gathering concurrent requests into one forward pass) can later go behind it without route changes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

Ranked = list[tuple[str, float]]


class PredictService:
    def __init__(self, *, cache_size: int, device: str = "cpu") -> None:
        self.cache_size = cache_size
        self.device = device
        self._cache: OrderedDict[str, tuple[float, Any, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def _classifier(self, classifier_id: str, directory: Path) -> tuple[Any, dict[str, Any]]:
        from models.checkpoint import load_classifier

        stamp = (directory / "model.json").stat().st_mtime
        with self._lock:
            hit = self._cache.get(classifier_id)
            if hit is not None and hit[0] == stamp:
                self._cache.move_to_end(classifier_id)
                return hit[1], hit[2]
        clf, card = load_classifier(directory, device=self.device)
        with self._lock:
            self._cache[classifier_id] = (stamp, clf, card)
            self._cache.move_to_end(classifier_id)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return clf, card

    def evict(self, classifier_id: str) -> None:
        with self._lock:
            self._cache.pop(classifier_id, None)

    def cached_ids(self) -> list[str]:
        with self._lock:
            return list(self._cache)

    def predict_sync(
        self, classifier_id: str, directory: Path, images: list[bytes], top_k: int
    ) -> list[Ranked | str]:
        """Top-k (label, probability) per image, or the reason an image could not be decoded."""
        import numpy as np
        import torch

        from models.data import decode_image, to_float
        from models.errors import DatasetError

        clf, card = self._classifier(classifier_id, directory)
        out: list[Ranked | str] = []
        arrays: list[np.ndarray] = []
        slots: list[int] = []
        for data in images:
            try:
                arrays.append(
                    decode_image(data, channels=card["channels"], image_size=card["image_size"])
                )
                slots.append(len(out))
                out.append([])
            except DatasetError as exc:
                out.append(str(exc))
        if arrays:
            x = to_float(torch.from_numpy(np.stack(arrays))).to(self.device)
            with torch.inference_mode():
                probs = clf.predict_proba(x).cpu()
            k = min(top_k, probs.shape[1])
            values, indices = probs.topk(k, dim=1)
            for slot, vs, ix in zip(slots, values.tolist(), indices.tolist(), strict=True):
                out[slot] = [
                    (clf.labels[i], round(float(v), 6)) for v, i in zip(vs, ix, strict=True)
                ]
        return out

    async def predict(
        self, classifier_id: str, directory: Path, images: list[bytes], top_k: int
    ) -> list[Ranked | str]:
        return await run_in_threadpool(self.predict_sync, classifier_id, directory, images, top_k)
