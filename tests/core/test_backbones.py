from __future__ import annotations

import pytest
import torch

from models.backbones import available_backbones, create_backbone, feature_dim, register_backbone
from models.errors import ConfigError


def _conv4_width(filters: int, size: int) -> int:
    side = size
    for _ in range(4):  # four 2x2 max pools in ceil mode
        side = -(-side // 2)
    return filters * side * side


# The feature width each registered backbone should give, worked out from its architecture
# rather than asked of the network itself.
EXPECTED_WIDTH = {
    "conv4": _conv4_width,
    "resnet12": lambda filters, size: filters * 10,  # last block 10f wide, global average pool
}


@pytest.mark.parametrize("name", available_backbones())
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 84), (3, 33)])
def test_every_backbone_forwards_any_size(name: str, channels: int, size: int) -> None:
    net = create_backbone(name, in_channels=channels, filters=8)
    out = net(torch.rand(2, channels, size, size))
    width = EXPECTED_WIDTH[name](8, size)
    assert out.shape == (2, width)
    assert feature_dim(net, channels, size) == width
    assert torch.isfinite(out).all()


def test_conv4_layout() -> None:
    net = create_backbone("conv4", in_channels=1, filters=32)
    assert feature_dim(net, 1, 28) == 32 * 2 * 2
    assert feature_dim(create_backbone("conv4", in_channels=3, filters=64), 3, 84) == 64 * 6 * 6


def test_registry_errors() -> None:
    with pytest.raises(ConfigError, match="unknown backbone 'vgg'.*conv4.*resnet12"):
        create_backbone("vgg")
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("conv4")(lambda **_: torch.nn.Identity())
