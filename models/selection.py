"""Choosing a base model for a dataset before training on it: a cheap proxy of how well a base
model's features separate the dataset's own classes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.network import MetaNet


@dataclass(frozen=True)
class ProxyScore:
    accuracy: float | None  # None when no class has two images
    # Mean of (d_other - d_own) / (d_other + d_own) over the scored images (d: squared distance to
    # its own class's mean and to the nearest other one): positive exactly when an image is
    # right, continuous, and the same whatever the features' scale, so it breaks ties between
    # base models that are both always right on an easy dataset.
    margin: float | None
    images: int  # images scored: those whose class has another image


def sample_per_class(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of at most `per_class` images of each class (a seeded draw), so the proxy's cost
    is bounded by the number of classes, not the dataset's size."""
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten().cpu()
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(keep).sort().values


@torch.no_grad()
def prototype_loo_accuracy(net: MetaNet, images: torch.Tensor, labels: torch.Tensor,
                           batch: int = 128) -> ProxyScore:
    """Each image classified by the nearest class mean (squared Euclidean, as the prototype head
    ranks classes) of the other images' features: its own class's mean leaves it out. Images of
    a class with one image cannot be scored and are left out (all are, with fewer than two
    classes)."""
    net.eval()
    feats = torch.cat([net.features(images[i:i + batch]).float()
                       for i in range(0, len(images), batch)])
    num_classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=num_classes).float()
    sums = torch.zeros(num_classes, feats.shape[1], device=feats.device).index_add_(0, labels, feats)
    scorable = counts[labels] >= 2
    if not bool(scorable.any()) or int((counts > 0).sum()) < 2:
        return ProxyScore(None, None, 0)
    means = sums / counts.clamp_min(1).unsqueeze(1)
    dist = torch.cdist(feats, means) ** 2
    dist[:, counts == 0] = float("inf")
    own = (sums[labels] - feats) / (counts[labels] - 1).clamp_min(1).unsqueeze(1)
    rows = torch.arange(len(labels), device=labels.device)
    d_own = ((feats - own) ** 2).sum(1)
    dist[rows, labels] = float("inf")
    d_other = dist.min(1).values
    margin = ((d_other - d_own) / (d_other + d_own).clamp_min(1e-12))[scorable]
    correct = (d_own < d_other)[scorable]
    return ProxyScore(round(float(correct.float().mean()), 4), round(float(margin.mean()), 4),
                      int(scorable.sum()))
