"""CMC-style ResNets: one ResNet per view (RGB 3 channels, depth 1 channel), width 0.5 / 1 / 2.

Module names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1..4``, ``fc``) and the
published DVSCL ResNet: the stem always has 64 channels and stage ``k`` has
``int(64 * width) * 2**(k-1)`` planes. Layers: stem = 1, layer1..4 = 2..5, global-average-pooled
features = 6, L2-normalised fc embedding = 7.
"""
from __future__ import annotations

from typing import Sequence, Type

from torch import Tensor, nn

from .common import Stage, StagedBranch, TwoViewEncoder, init_weights, l2_normalize

STEM_CHANNELS = 64


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    """1x1 conv + BN projection for the shortcut, or None when the identity fits."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual shortcut: (B, in_ch, H, W) -> (B, planes, H/stride, W/stride)."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 convs with a residual shortcut:
    (B, in_ch, H, W) -> (B, 4 * planes, H/stride, W/stride)."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = Type[BasicBlock] | Type[Bottleneck]

# depth -> (block type, blocks per stage)
RESNET_DEPTHS: dict[int, tuple[Block, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}
# version suffix -> per-view width multiplier
RESNET_WIDTHS: dict[str, float] = {"v1": 0.5, "v2": 1.0, "v3": 2.0}


class ResNetBranch(StagedBranch):
    """ResNet encoder for one view.

    For a (B, in_channels, H, W) input, ``base = int(64 * width)`` and ``e = block.expansion``:
    layer 1 (stem) (B, 64, H/4, W/4); layer k = 2..5 (B, base * 2**(k-2) * e, H/s, W/s) with
    s = 4, 8, 16, 32 (sizes rounded up); layer 6 (B, 8 * base * e); layer 7 (B, feat_dim), unit norm.
    """

    num_layers = 7

    def __init__(
        self, block: Block, blocks: Sequence[int], in_channels: int, width: float, feat_dim: int = 128
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM_CHANNELS, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        base = int(STEM_CHANNELS * width)
        in_ch = STEM_CHANNELS
        stages: list[nn.Sequential] = []
        for index, count in enumerate(blocks):
            planes, stride = base * 2**index, 1 if index == 0 else 2
            layer = []
            for block_index in range(count):
                layer.append(block(in_ch, planes, stride if block_index == 0 else 1))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, feat_dim)
        init_weights(self)

    def _stem(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 64, H/4, W/4)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def _pooled(self, x: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, C)."""
        return self.avgpool(x).flatten(1)

    def _embed(self, x: Tensor) -> Tensor:
        """(B, C) pooled features -> (B, feat_dim) unit-norm embedding."""
        return l2_normalize(self.fc(x))

    def stages(self) -> Sequence[Stage]:
        return (self._stem, self.layer1, self.layer2, self.layer3, self.layer4, self._pooled, self._embed)


def resnet(depth: int, version: str, feat_dim: int = 128) -> TwoViewEncoder:
    """Two-view ResNet ``resnet{depth}{version}``: ``rgb_to_d`` takes 3 channels, ``d_to_rgb`` 1."""
    block, blocks = RESNET_DEPTHS[depth]
    width = RESNET_WIDTHS[version]
    return TwoViewEncoder(
        f"resnet{depth}{version}",
        ResNetBranch(block, blocks, 3, width, feat_dim),
        ResNetBranch(block, blocks, 1, width, feat_dim),
        min_input_size=1,
    )
