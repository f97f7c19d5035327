"""Split AlexNet: two half-width AlexNets, one for RGB (3 channels) and one for depth (1 channel).

Module names and indices follow the published DVSCL AlexNet, so a published state dict loads after
stripping its ``encoder.module.`` prefix. Layers: conv1..conv5 = 1..5, fc6 = 6, fc7 = 7,
L2-normalised fc8 embedding = 8.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .common import Stage, StagedBranch, TwoViewEncoder, init_weights, l2_normalize

# AlexNet's smallest input: conv5's 3x3 max-pool needs a 3x3 map, i.e. >= 63 px input.
ALEXNET_MIN_INPUT_SIZE = 63


def _conv_block(in_ch: int, out_ch: int, kernel: int, stride: int, padding: int, pool: bool) -> nn.Sequential:
    """Conv (no bias) + BN + ReLU [+ MaxPool(3, 2)]."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(3, 2))
    return nn.Sequential(*layers)


def _fc_block(in_features: int, out_features: int) -> nn.Sequential:
    """Linear + BN1d + ReLU + Dropout(0.5)."""
    return nn.Sequential(
        nn.Linear(in_features, out_features),
        nn.BatchNorm1d(out_features),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
    )


class AlexNetHalf(StagedBranch):
    """Half-width AlexNet for one view.

    Shapes for a (B, in_channels, 224, 224) input: layer 1 (B, 48, 27, 27), 2 (B, 128, 13, 13),
    3 (B, 192, 13, 13), 4 (B, 192, 13, 13), 5 (B, 128, 6, 6), 6 and 7 (B, 2048), 8 (B, feat_dim).
    conv5's map is adaptively max-pooled to 6x6 before fc6, so any input >= 63 px works.
    """

    num_layers = 8

    def __init__(self, in_channels: int, feat_dim: int = 128) -> None:
        super().__init__()
        self.conv_block_1 = _conv_block(in_channels, 48, 11, 4, 2, pool=True)
        self.conv_block_2 = _conv_block(48, 128, 5, 1, 2, pool=True)
        self.conv_block_3 = _conv_block(128, 192, 3, 1, 1, pool=False)
        self.conv_block_4 = _conv_block(192, 192, 3, 1, 1, pool=False)
        self.conv_block_5 = _conv_block(192, 128, 3, 1, 1, pool=True)
        self.pool = nn.AdaptiveMaxPool2d((6, 6))
        self.fc6 = _fc_block(128 * 6 * 6, 2048)
        self.fc7 = _fc_block(2048, 2048)
        self.fc8 = nn.Sequential(nn.Linear(2048, feat_dim))
        init_weights(self)

    def _fc6(self, x: Tensor) -> Tensor:
        """(B, 128, h, w) conv5 map -> (B, 2048)."""
        return self.fc6(self.pool(x).flatten(1))

    def _embed(self, x: Tensor) -> Tensor:
        """(B, 2048) fc7 output -> (B, feat_dim) unit-norm embedding."""
        return l2_normalize(self.fc8(x))

    def stages(self) -> Sequence[Stage]:
        return (
            self.conv_block_1,
            self.conv_block_2,
            self.conv_block_3,
            self.conv_block_4,
            self.conv_block_5,
            self._fc6,
            self.fc7,
            self._embed,
        )


def alexnet(feat_dim: int = 128) -> TwoViewEncoder:
    """The split AlexNet: ``rgb_to_d`` = AlexNetHalf(3), ``d_to_rgb`` = AlexNetHalf(1)."""
    return TwoViewEncoder(
        "alexnet",
        AlexNetHalf(3, feat_dim),
        AlexNetHalf(1, feat_dim),
        min_input_size=ALEXNET_MIN_INPUT_SIZE,
    )
