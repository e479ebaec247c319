"""Seeded N-way K-shot episodes over an image set's labels: the same seed gives every method the
same tasks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.errors import ConfigError


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
