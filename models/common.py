"""Pieces shared by every DVSCL encoder: the two-view wrapper, staged branches, init, L2 norm."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Stage = Callable[[Tensor], Tensor]


def l2_normalize(x: Tensor) -> Tensor:
    """Scale each row of ``x`` (B, D) to unit L2 norm; an all-zero row stays zero instead of NaN."""
    return F.normalize(x, p=2.0, dim=1, eps=1e-12)


def init_weights(module: nn.Module) -> None:
    """Initialise like torchvision's ResNet: Kaiming-normal (fan_out, ReLU) convs, BN to identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class StagedBranch(nn.Module):
    """A single-view encoder whose forward pass is a fixed sequence of numbered stages.

    Subclasses set ``num_layers`` and implement :meth:`stages`; stage ``k`` (1-based) is the
    output returned for ``layer=k``, and the last stage is the L2-normalised embedding.
    """

    num_layers: int

    def stages(self) -> Sequence[Stage]:
        """The ``num_layers`` stages, in order."""
        raise NotImplementedError

    def forward(self, x: Tensor, layer: int) -> Tensor:
        """Run the stages up to and including ``layer`` (1..num_layers) on ``x`` (B, C, H, W)."""
        for index, stage in enumerate(self.stages(), start=1):
            x = stage(x)
            if index == layer:
                return x
        raise ValueError(f"layer must be in 1..{self.num_layers}, got {layer}")


class TwoViewEncoder(nn.Module):
    """RGB + depth encoder: ``rgb_to_d`` sees channels 0-2, ``d_to_rgb`` sees channel 3.

    Attributes:
        name: the model name given to :func:`models.build_model`.
        embedding_layer: the layer number of the L2-normalised embedding (the default layer).
        min_input_size: the smallest input height/width the branches accept.
    """

    def __init__(
        self, name: str, rgb_to_d: StagedBranch, d_to_rgb: StagedBranch, min_input_size: int
    ) -> None:
        super().__init__()
        if rgb_to_d.num_layers != d_to_rgb.num_layers:
            raise ValueError("both branches must have the same number of layers")
        self.name = name
        self.embedding_layer = rgb_to_d.num_layers
        self.min_input_size = min_input_size
        self.rgb_to_d = rgb_to_d
        self.d_to_rgb = d_to_rgb

    def forward(self, x: Tensor, layer: int | None = None) -> tuple[Tensor, Tensor]:
        """Encode both views.

        Args:
            x: (B, 4, H, W); channels 0-2 RGB, channel 3 depth; H, W >= ``min_input_size``.
            layer: 1..``embedding_layer``; ``None`` means the embedding (B, feat_dim).

        Returns:
            ``(feat_rgb, feat_depth)``, each the chosen layer's output for one view.
        """
        if layer is None:
            layer = self.embedding_layer
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= self.embedding_layer:
            raise ValueError(f"{self.name}: layer must be in 1..{self.embedding_layer}, got {layer!r}")
        if x.dim() != 4 or x.shape[1] != 4:
            raise ValueError(f"{self.name}: expected input (B, 4, H, W), got {tuple(x.shape)}")
        if min(x.shape[2:]) < self.min_input_size:
            raise ValueError(
                f"{self.name}: input must be at least {self.min_input_size} px, got {tuple(x.shape[2:])}"
            )
        rgb, depth = torch.split(x, [3, 1], dim=1)
        return self.rgb_to_d(rgb, layer), self.d_to_rgb(depth, layer)
