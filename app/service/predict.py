"""Predicting in the API process, off the event loop, with concurrent requests to one classifier
micro-batched into one forward pass. Like a TorchServe handler, a request goes through three
steps: `preprocess` (check and decode its images), `inference` (one forward pass over a batch),
`postprocess` (top-k labels per image); the batcher between them is the rest of this class.
Loaded classifiers come from `app.service.classifier_cache`, looked up once per request, in `preprocess`:
the request then carries its classifier to the forward pass, so that it is answered by the
version whose labels it decoded against even if a retrain lands meanwhile.

Each request decodes its own images in one of a few decoding threads, except a request of a few
small images (by their declared size, read from the header) to a classifier already loaded: those
decode on the event loop, where they take less time than a hand-over to a thread and back (issue
13). The decoded images then join the classifier's pending batch, which is run after at most `max_wait_s` (or at once when it reaches
`max_batch` images) as one forward pass in a forward thread, and every request gets its own rows back.
The wait is only worth it when another request could still join: a batch also runs at once when
no other request to its classifier is decoding and none of its forward passes is running, so a
lone request pays no wait. Prediction is in eval mode, so an image's answer does not depend on
what it was batched with.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.infra import metrics
from app.service.classifier_cache import ClassifierCache
from app.service.uploads import check_image


class Ranked(list[tuple[str, float]]):
    """An image's top-k (label, probability), best first, with its open-set score and the
    classifier's threshold for it (both None for a classifier trained before open-set scores)."""

    score: float | None = None
    threshold: float | None = None

# A request decodes on the event loop when it has at most this many images, each declaring at
# most this many pixels (an 84x84 JPEG decodes in about 0.1 ms; a 128x128 one in well under 1 ms).
INLINE_IMAGES = 4
INLINE_PIXELS = 128 * 128


# glibc's mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(trim_bytes: int = 128 << 20, mmap_bytes: int = 32 << 20) -> bool:
    """Have glibc's allocator keep up to `trim_bytes` of freed memory instead of giving it back to
    the system after every forward pass; True when set.

    Forward passes run in threads, whose malloc arenas glibc trims eagerly: each pass then
    faulted in its activations afresh (about 600 page faults, 2.4 MB zeroed, for one 84x84
    image), and a forward pass took 2.3x the CPU it takes in the main thread (1.74 ms against
    0.70 ms; issue 13). Fixed thresholds stop that, at the cost of up to `trim_bytes` held.
    Nothing is changed on other C libraries, or where the environment already chose
    (`MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_`, or another allocator in `LD_PRELOAD`)."""
    if not sys.platform.startswith("linux") or any(
        os.environ.get(v) for v in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD")
    ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_bytes)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_bytes)
    )


def _declared_pixels(data: bytes) -> int | None:
    """Width x height from the image's header (nothing decoded); None when it has none."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            return int(width * height)
    except Exception:  # the decoding thread finds and reports what is wrong with it
        return None


@dataclass
class _Pending:
    classifier: Any  # the one loaded version every request of this batch was decoded for
    requests: list[tuple[Any, asyncio.Future[Any]]] = field(default_factory=list)
    size: int = 0
    flush: asyncio.TimerHandle | None = None
    checking: bool = False  # a flush-if-idle check is scheduled


class PredictService:
    """Top-k predictions for a classifier's images, micro-batched per classifier."""

    def __init__(
        self,
        *,
        cache_size: int,
        cache_bytes: int | None = None,
        device: str = "cpu",
        max_wait_s: float = 0.005,
        max_batch: int = 64,
        max_pixels: int = 40_000_000,
        decode_threads: int = 2,
        forward_threads: int = 2,
    ) -> None:
        self.cache = ClassifierCache(size=cache_size, max_bytes=cache_bytes, device=device)
        self.max_pixels = max_pixels
        # Decoding is the expensive, memory-hungry step (a 6000x6000 PNG of 120 KB is 100 MB
        # and half a second decoded): it runs in these few threads, never on the event loop, and
        # never in more threads at once than this however many requests arrive.
        self._decoder = ThreadPoolExecutor(decode_threads, thread_name_prefix="mtl-decode")
        # Forward passes run in threads of their own (torch releases the GIL), not in the thread
        # pool the sync routes share: two at once keep two cores busy at high concurrency.
        self._forward = ThreadPoolExecutor(forward_threads, thread_name_prefix="mtl-forward")
        self.device = device
        self.max_wait_s = max_wait_s
        self.max_batch = max_batch
        self.forward_passes = 0
        self._pending: dict[str, _Pending] = {}
        # Per classifier, touched only on the event loop: requests still decoding (they may join
        # the pending batch) and forward passes running (the next batch grows meanwhile).
        self._decoding: dict[str, int] = {}
        self._running: dict[str, int] = {}
        self._tasks: set[asyncio.Future[None]] = set()

    def evict(self, classifier_id: str) -> None:
        self.cache.evict(classifier_id)

    def cached_ids(self) -> list[str]:
        return self.cache.ids()

    # ------------------------------------------------------------------ steps, in threads

    def preprocess(
        self, classifier_id: str, directory: Path, images: list[bytes]
    ) -> tuple[Any, list[str | None], Any]:
        """uint8 (n, C, H, W) of the decodable images, the reason per image that is not, and the
        classifier they were decoded for."""
        return self._decode(self.cache.get(classifier_id, directory), images, checked=False)

    def _decode(
        self, loaded: tuple[Any, dict[str, Any]], images: list[bytes], *, checked: bool
    ) -> tuple[Any, list[str | None], Any]:
        """`preprocess` with the classifier at hand; `checked`: every image's header was read
        and its declared size is small (`_loaded_if_small`)."""
        import numpy as np
        import torch

        from models.errors import DatasetError
        from models.loaders import decode_image

        clf, card = loaded
        arrays: list[Any] = []
        errors: list[str | None] = []
        for data in images:
            # The declared size first, so that a decompression bomb is never decoded.
            reason = None if checked else check_image(data, max_pixels=self.max_pixels, decode=False)
            if reason is None:
                try:
                    arrays.append(
                        decode_image(data, channels=card["channels"], image_size=card["image_size"])
                    )
                except DatasetError as exc:
                    reason = str(exc)
            errors.append(reason)
        batch = torch.from_numpy(np.stack(arrays)) if arrays else None
        return batch, errors, clf

    def _loaded_if_small(
        self, classifier_id: str, directory: Path, images: list[bytes]
    ) -> tuple[Any, dict[str, Any]] | None:
        """The loaded classifier when this request may decode on the event loop: a few images,
        each small by its header, to a classifier already loaded (loading one takes seconds)."""
        if len(images) > INLINE_IMAGES:
            return None
        for data in images:
            pixels = _declared_pixels(data)
            if pixels is None or not 0 < pixels <= min(INLINE_PIXELS, self.max_pixels):
                return None
        return self.cache.peek(classifier_id, directory)

    def inference(self, clf: Any, batch: Any) -> Any:
        """Class probabilities of a uint8 batch and, as one more column, each image's open-set
        score (NaN without one): one forward pass (in a thread)."""
        import torch

        from models.data import to_float

        self.forward_passes += 1
        metrics.observe_predict_batch(len(batch))
        with torch.inference_mode():
            probs, scores = clf.probabilities_and_scores(to_float(batch.to(self.device)))
            if scores is None:
                scores = torch.full((len(probs),), float("nan"), device=probs.device)
            return torch.cat([probs, scores.unsqueeze(1)], dim=1).cpu()

    # ------------------------------------------------------------------ the batcher

    async def _probabilities(self, classifier_id: str, clf: Any, batch: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        pending = self._pending.get(classifier_id)
        if pending is not None and pending.classifier is not clf:
            # A retrained version: the batch of the old one runs now, this request starts the next.
            self._start_flush(classifier_id)
            pending = None
        if pending is None:
            pending = self._pending[classifier_id] = _Pending(clf)
            pending.flush = loop.call_later(self.max_wait_s, self._start_flush, classifier_id)
        pending.requests.append((batch, future))
        pending.size += len(batch)
        if pending.size >= self.max_batch:
            self._start_flush(classifier_id)
        elif not pending.checking and self._nothing_to_wait_for(classifier_id):
            # Not at once but after the requests already ready on the loop (those that decoded
            # there) have joined: they share this forward pass at no wait.
            pending.checking = True
            loop.call_soon(self._flush_if_idle, classifier_id)
        return await future

    def _nothing_to_wait_for(self, classifier_id: str) -> bool:
        return not self._decoding.get(classifier_id) and not self._running.get(classifier_id)

    def _flush_if_idle(self, classifier_id: str) -> None:
        pending = self._pending.get(classifier_id)
        if pending is not None:
            pending.checking = False
            if self._nothing_to_wait_for(classifier_id):
                self._start_flush(classifier_id)

    def _start_flush(self, classifier_id: str) -> None:
        pending = self._pending.pop(classifier_id, None)
        if pending is None:
            return
        if pending.flush is not None:
            pending.flush.cancel()
        task = asyncio.ensure_future(self._flush(classifier_id, pending))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, classifier_id: str, pending: _Pending) -> None:
        import torch

        batches = [b for b, _ in pending.requests]
        self._running[classifier_id] = self._running.get(classifier_id, 0) + 1
        try:
            probs = await asyncio.get_running_loop().run_in_executor(
                self._forward, self.inference, pending.classifier, torch.cat(batches),
            )
        except Exception as exc:  # every waiting request gets the error
            for _, future in pending.requests:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._forward_done(classifier_id)
        start = 0
        for batch, future in pending.requests:
            if not future.done():
                future.set_result(probs[start : start + len(batch)])
            start += len(batch)

    def _forward_done(self, classifier_id: str) -> None:
        self._running[classifier_id] -= 1
        if not self._running[classifier_id]:
            del self._running[classifier_id]
            if classifier_id in self._pending and self._nothing_to_wait_for(classifier_id):
                self._start_flush(classifier_id)

    def _decoded(self, classifier_id: str, *, joining: bool) -> None:
        self._decoding[classifier_id] -= 1
        if not self._decoding[classifier_id]:
            del self._decoding[classifier_id]
            # A batch that waited only for a request that will not join need not wait any longer.
            pending = classifier_id in self._pending
            if not joining and pending and self._nothing_to_wait_for(classifier_id):
                self._start_flush(classifier_id)

    async def predict(
        self, classifier_id: str, directory: Path, images: list[bytes], top_k: int
    ) -> list[Ranked | str]:
        """Top-k (label, probability) per image, or the reason an image could not be decoded."""
        loaded = self._loaded_if_small(classifier_id, directory, images)
        if loaded is not None:
            batch, errors, clf = self._decode(loaded, images, checked=True)
        else:
            self._decoding[classifier_id] = self._decoding.get(classifier_id, 0) + 1
            try:
                batch, errors, clf = await asyncio.get_running_loop().run_in_executor(
                    self._decoder, self.preprocess, classifier_id, directory, images
                )
            except BaseException:
                self._decoded(classifier_id, joining=False)
                raise
            self._decoded(classifier_id, joining=batch is not None)
        if batch is None:
            return [e or "" for e in errors]
        probs = await self._probabilities(classifier_id, clf, batch)
        threshold = getattr(clf, "open_set_threshold", None)
        return self.postprocess(probs, errors, list(clf.labels), top_k,
                                None if threshold is None else float(threshold))

    @staticmethod
    def postprocess(
        probs: Any, errors: list[str | None], labels: list[str], top_k: int,
        threshold: float | None = None,
    ) -> list[Ranked | str]:
        """Per image, in request order: its top-k (label, probability) with its open-set score,
        or why it did not decode. `probs` has a row per decodable image: the probabilities, then
        the score (NaN: none)."""
        import math

        scores = probs[:, -1].tolist()
        values, indices = probs[:, :-1].topk(min(top_k, probs.shape[1] - 1), dim=1)
        rows = iter(zip(values.tolist(), indices.tolist(), scores, strict=True))
        out: list[Ranked | str] = []
        for error in errors:
            if error is not None:
                out.append(error)
                continue
            vs, ix, score = next(rows)
            ranked = Ranked((labels[i], round(float(v), 6)) for v, i in zip(vs, ix, strict=True))
            if not math.isnan(score):
                ranked.score = round(float(score), 6)
                ranked.threshold = None if threshold is None or math.isnan(threshold) else threshold
            out.append(ranked)
        return out
