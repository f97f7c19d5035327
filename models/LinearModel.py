"""Linear evaluation heads on a DVSCL encoder (CMC keeps its linear heads in `models/LinearModel.py` too).

`FeatureExtractor` pools the views' features at one encoder layer; `make_head` is the linear
classifier (optionally after a feature-standardising BatchNorm); `AttentionHead` puts channel and
spatial attention before it (the published `--attention att`); `Classifier` chains them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import TwoViewEncoder

# CMC's linear evaluation of AlexNet max-pools conv layer k to this many cells per side.
ALEXNET_POOL_CELLS = {1: 10, 2: 6, 3: 5, 4: 5, 5: 6}


class FeatureExtractor(nn.Module):
    """The views' features at `layer`: x (B,4,H,W) -> pooled and concatenated (B, D), or with
    `maps` the unpooled per-view outputs, a tuple of (B,C,h,w).

    Conv maps (B,C,h,w) are pooled per view: AlexNet conv layers by adaptive max pooling to CMC's
    linear-evaluation grid (10/6/5/5/6 cells per side for conv1..5, never more than the map has),
    ResNet stem and stages by global average pooling. Vector layers pass unchanged. `views` 2 uses
    both views (D is twice the per-view width), 1 the RGB view alone (its encoder half only, for
    data without a second view); `out_dim` measures D.
    """

    def __init__(self, encoder: TwoViewEncoder, layer: int, views: int = 2, maps: bool = False) -> None:
        super().__init__()
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views}")
        self.encoder = encoder
        self.layer = layer
        self.views = views
        self.maps = maps

    def pool(self, feat: Tensor) -> Tensor:
        """(B,C,h,w) or (B,C) -> (B, C * cells**2) or (B, C)."""
        if feat.dim() == 2:
            return feat
        if self.encoder.name == "alexnet":
            cells = min(ALEXNET_POOL_CELLS[self.layer], feat.shape[-2], feat.shape[-1])
            return F.adaptive_max_pool2d(feat, cells).flatten(1)
        return F.adaptive_avg_pool2d(feat, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        if self.views == 2:
            feats = self.encoder(x, self.layer)
        else:
            feats = (self.encoder.rgb_to_d(x[:, :3], self.layer),)
        if self.maps:
            return tuple(feats)
        return torch.cat([self.pool(feat) for feat in feats], dim=1)

    @torch.no_grad()
    def out_dim(self, image_size: int) -> int:
        """D for (image_size x image_size) inputs, or with `maps` the channels C of one view's map,
        by one forward pass of a dummy image in eval mode."""
        was_training = self.training
        self.eval()
        device = next(self.encoder.parameters()).device
        out = self(torch.zeros(1, 4, image_size, image_size, device=device))
        self.train(was_training)
        return int(out[0].shape[1] if self.maps else out.shape[1])


class ChannelSpatialAttention(nn.Module):
    """CBAM-style attention on a map x (B,C,h,w) -> (B,C,h,w): channel weights from a shared MLP
    on the average- and max-pooled map, then spatial weights from a 7x7 convolution of the
    channel mean and maximum, both through a sigmoid."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        self.spatial = nn.Conv2d(2, 1, kernel_size=7, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        channel = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))
        x = x * channel[:, :, None, None]
        spatial = torch.sigmoid(self.spatial(torch.stack((x.mean(dim=1), x.amax(dim=1)), dim=1)))
        return x * spatial


class AttentionHead(nn.Module):
    """The published fine-tuning's `--attention att` head: per view, channel and spatial attention
    on the map, then global average pooling; the views' vectors concatenated and classified by
    `make_head`. Input: a tuple of `views` maps (B,C,h,w); output: logits (B, n_classes)."""

    def __init__(self, channels: int, views: int, n_classes: int, batch_norm: bool) -> None:
        super().__init__()
        self.attention = nn.ModuleList(ChannelSpatialAttention(channels) for _ in range(views))
        self.classifier = make_head(channels * views, n_classes, batch_norm)

    def forward(self, maps: tuple[Tensor, ...]) -> Tensor:
        pooled = [F.adaptive_avg_pool2d(attend(m), 1).flatten(1) for attend, m in zip(self.attention, maps)]
        return self.classifier(torch.cat(pooled, dim=1))


def make_head(width: int, n_classes: int, batch_norm: bool) -> nn.Module:
    """Linear head (B, width) -> (B, n_classes), optionally after a BatchNorm without affine
    parameters that standardises each feature (as MAE's linear probe): at test time it is a fixed
    affine map, so the classifier stays linear, but training no longer depends on the scale of
    the features (a random encoder's vary a tenth as much as a pre-trained one's)."""
    linear = nn.Linear(width, n_classes)
    return nn.Sequential(nn.BatchNorm1d(width, affine=False), linear) if batch_norm else linear


class Classifier(nn.Module):
    """A linear head, optionally on top of a feature extractor: input -> logits (B, n_classes).

    Without an extractor the input is already features (B, D). A frozen extractor stays in eval
    mode whatever `train()` says, gets no gradients, and runs without autograd.
    """

    def __init__(self, head: nn.Module, extractor: FeatureExtractor | None = None, frozen: bool = False) -> None:
        super().__init__()
        self.head = head
        self.extractor = extractor
        self.frozen = False
        self.set_frozen(frozen)

    def set_frozen(self, frozen: bool) -> None:
        """Freeze the extractor (eval mode, no gradients) or release it for training."""
        self.frozen = frozen
        if self.extractor is not None:
            self.extractor.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.extractor is not None and self.frozen:
            self.extractor.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """x: features (B, D) without an extractor, else images (B,4,H,W)."""
        if self.extractor is None:
            return self.head(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            feat = self.extractor(x)
        return self.head(feat)
