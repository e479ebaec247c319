"""Feature extractors, built through a registry and one factory (`create_backbone`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from models.errors import ConfigError

BackboneFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a backbone factory under `name`; a duplicate name is a programming error."""

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone; every backbone maps (B, C, H, W) to (B, D) features."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown backbone {name!r}; known backbones: {', '.join(available_backbones())}"
        )
    # Channels-last weights (and inputs, see `to_backbone_input`) let oneDNN's convolutions skip
    # layout conversions: a Conv-4 step on 64 Omniglot images took 80-100 ms instead of 114-157
    # ms on one CPU thread. Flatten still reads features in (C, H, W) order, so checkpoints
    # written before are unaffected.
    return _REGISTRY[name](**kwargs).to(memory_format=torch.channels_last)


def to_backbone_input(x: torch.Tensor) -> torch.Tensor:
    """Images as the backbones prefer them (channels-last memory, same shape and values)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def feature_dim(backbone: nn.Module, channels: int, image_size: int) -> int:
    """Width of the backbone's output for a given input size, found by one dry forward pass."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.zeros(1, channels, image_size, image_size))
    backbone.train(was_training)
    return int(out.shape[1])


def _conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
    )


@register_backbone("conv4")
def conv4(in_channels: int = 3, filters: int = 64, **_: Any) -> nn.Module:
    """Conv-4 of Vinyals et al.: 4 x [conv3x3, batch norm, ReLU, max-pool 2], then flatten.

    ceil_mode pooling keeps odd sizes (e.g. 84 -> 42 -> 21 -> 11 -> 6) from losing border pixels,
    so any input size of at least 1 pixel works.
    """
    layers = [_conv_block(in_channels if i == 0 else filters, filters) for i in range(4)]
    return nn.Sequential(*layers, nn.Flatten())


class _ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.LeakyReLU(0.1),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.LeakyReLU(0.1),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)
        )
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.body(x) + self.shortcut(x)))


@register_backbone("resnet12")
def resnet12(in_channels: int = 3, filters: int = 64, **_: Any) -> nn.Module:
    """ResNet-12 (Oreshkin et al. 2018): four residual blocks of widths f, 2.5f, 5f, 10f, then
    global average pooling (so the feature width does not depend on the input size)."""
    widths = [filters, int(filters * 2.5), filters * 5, filters * 10]
    blocks: list[nn.Module] = []
    prev = in_channels
    for w in widths:
        blocks.append(_ResBlock(prev, w))
        prev = w
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
