"""Linear evaluation heads on a DVSCL encoder (CMC keeps its linear heads in `models/LinearModel.py` too).

`FeatureExtractor` pools both views' features at one encoder layer; `make_head` is the linear
classifier (optionally after a feature-standardising BatchNorm); `Classifier` chains them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import TwoViewEncoder

# CMC's linear evaluation of AlexNet max-pools conv layer k to this many cells per side.
ALEXNET_POOL_CELLS = {1: 10, 2: 6, 3: 5, 4: 5, 5: 6}


class FeatureExtractor(nn.Module):
    """Both views' features at `layer`, pooled and concatenated: x (B,4,H,W) -> (B, D).

    Conv maps (B,C,h,w) are pooled per view: AlexNet conv layers by adaptive max pooling to CMC's
    linear-evaluation grid (10/6/5/5/6 cells per side for conv1..5, never more than the map has),
    ResNet stem and stages by global average pooling. Vector layers pass unchanged. D is twice
    the per-view width; `out_dim` measures it.
    """

    def __init__(self, encoder: TwoViewEncoder, layer: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.layer = layer

    def pool(self, feat: Tensor) -> Tensor:
        """(B,C,h,w) or (B,C) -> (B, C * cells**2) or (B, C)."""
        if feat.dim() == 2:
            return feat
        if self.encoder.name == "alexnet":
            cells = min(ALEXNET_POOL_CELLS[self.layer], feat.shape[-2], feat.shape[-1])
            return F.adaptive_max_pool2d(feat, cells).flatten(1)
        return F.adaptive_avg_pool2d(feat, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        feat_rgb, feat_depth = self.encoder(x, self.layer)
        return torch.cat([self.pool(feat_rgb), self.pool(feat_depth)], dim=1)

    @torch.no_grad()
    def out_dim(self, image_size: int) -> int:
        """D for (image_size x image_size) inputs, by one forward pass of a dummy image in eval mode."""
        was_training = self.training
        self.eval()
        device = next(self.encoder.parameters()).device
        width = self(torch.zeros(1, 4, image_size, image_size, device=device)).shape[1]
        self.train(was_training)
        return int(width)


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
        self.frozen = frozen
        if extractor is not None and frozen:
            extractor.requires_grad_(False)

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.extractor is not None and self.frozen:
            self.extractor.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.extractor is None:
            return self.head(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            feat = self.extractor(x)
        return self.head(feat)
