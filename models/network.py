"""The network meta-training moves: one shared backbone and two heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.backbones import create_backbone, feature_dim, to_backbone_input

META_HEAD = "meta"
TRANSFER_HEAD = "transfer"


class MetaNet(nn.Module):
    """Backbone plus an N-way meta head (moved by inner loops) and a C_base-way transfer head.

    Inputs are floats in [0, 1]; the per-channel normalisation of the training data is part of
    the network, so every caller (CLI, worker, API) feeds the same thing.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int,
        meta_ways: int,
        num_base_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        transfer_head: str = "zeros",
        cosine_scale: float = 10.0,
    ) -> None:
        super().__init__()
        if transfer_head not in ("zeros", "standard", "cosine"):
            raise ValueError(f"unknown transfer head {transfer_head!r}; use zeros, standard or cosine")
        self.backbone = backbone
        self.meta_head = nn.Linear(feature_dim, meta_ways)
        self.transfer_head = nn.Linear(feature_dim, num_base_classes)
        self.transfer_head_kind = transfer_head
        self.cosine_scale = cosine_scale
        # The authors zero-initialise both heads: every class starts equal, only features differ.
        # A zero transfer head passes almost no gradient to the backbone for a long time, so the
        # other transfer heads keep nn.Linear's init (a cosine head cannot start at zero at all).
        heads = [self.meta_head] + ([self.transfer_head] if transfer_head == "zeros" else [])
        for head in heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(to_backbone_input((x - self.mean) / self.std))

    def forward(self, x: torch.Tensor, head: str = META_HEAD) -> torch.Tensor:
        f = self.features(x)
        if head == META_HEAD:
            return self.meta_head(f)
        if head == TRANSFER_HEAD:
            if self.transfer_head_kind == "cosine":
                # Cosine classifier (Baseline++): no bias, logits = scale * cos(f, w_c).
                w = nn.functional.normalize(self.transfer_head.weight, dim=1)
                return self.cosine_scale * nn.functional.normalize(f, dim=1) @ w.t()
            return self.transfer_head(f)
        if head == "features":
            return f
        raise ValueError(f"unknown head {head!r}")


def build_metanet(
    *,
    backbone: str,
    filters: int,
    channels: int,
    image_size: int,
    meta_ways: int,
    num_base_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    transfer_head: str = "zeros",
    cosine_scale: float = 10.0,
) -> MetaNet:
    net = create_backbone(backbone, in_channels=channels, filters=filters)
    return MetaNet(
        net,
        feature_dim=feature_dim(net, channels, image_size),
        meta_ways=meta_ways,
        num_base_classes=num_base_classes,
        mean=mean,
        std=std,
        transfer_head=transfer_head,
        cosine_scale=cosine_scale,
    )


class Classifier(nn.Module):
    """An adapted model: backbone and a C-way head; predicts in eval mode, so one image gets the
    same answer alone as in any batch (batch norm uses running statistics)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, backbone: nn.Module, head: nn.Linear, mean: torch.Tensor, std: torch.Tensor,
        labels: Sequence[str], *, prototypes: torch.Tensor | None = None,
        threshold: float | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())
        self.labels = list(labels)
        # None until set: a None buffer is left out of the state dict (older checkpoints load).
        self.prototypes: torch.Tensor | None
        self.open_set_threshold: torch.Tensor | None
        self.register_buffer("prototypes", None)
        self.register_buffer("open_set_threshold", None)
        if prototypes is not None:
            self.set_open_set(prototypes, threshold)

    def set_open_set(self, prototypes: torch.Tensor, threshold: float | None) -> None:
        """Unit class directions (C, D) in feature space, and the score below which an image is
        "unknown" (`open_set_scores`); saved with the weights."""
        self.register_buffer("prototypes", prototypes.detach().clone())
        value = float("nan") if threshold is None else float(threshold)
        self.register_buffer("open_set_threshold", torch.tensor(value))

    @torch.no_grad()
    def probabilities_and_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class probabilities, and each image's open-set score: the cosine similarity of its
        features to the nearest class prototype (None without prototypes)."""
        self.eval()
        feats = self.features(x)
        probs = torch.softmax(self.head(feats), dim=1)
        if self.prototypes is None:
            return probs, None
        cosine = torch.nn.functional.normalize(feats, dim=1) @ self.prototypes.T
        return probs, cosine.max(dim=1).values

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(to_backbone_input((x - self.mean) / self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        self.eval()
        return torch.softmax(self(x), dim=1)
