"""DVSCL encoders. ``build_model(name, feat_dim)`` returns a :class:`TwoViewEncoder` whose
``forward(x (B, 4, H, W), layer=None)`` gives ``(feat_rgb, feat_depth)``."""
from __future__ import annotations

from .alexnet import AlexNetHalf, alexnet
from .common import StagedBranch, TwoViewEncoder, l2_normalize
from .resnet import RESNET_DEPTHS, RESNET_WIDTHS, BasicBlock, Bottleneck, ResNetBranch, resnet

MODEL_NAMES: tuple[str, ...] = ("alexnet",) + tuple(
    f"resnet{depth}{version}" for depth in RESNET_DEPTHS for version in RESNET_WIDTHS
)


def build_model(name: str, feat_dim: int = 128) -> TwoViewEncoder:
    """Build the encoder ``name`` (one of :data:`MODEL_NAMES`) with ``feat_dim``-d embeddings.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid names) or ``feat_dim`` < 1.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if isinstance(feat_dim, bool) or not isinstance(feat_dim, int) or feat_dim < 1:
        raise ValueError(f"feat_dim must be a positive integer, got {feat_dim!r}")
    if name == "alexnet":
        return alexnet(feat_dim)
    depth, version = name[len("resnet"):-2], name[-2:]
    return resnet(int(depth), version, feat_dim)


__all__ = [
    "MODEL_NAMES",
    "AlexNetHalf",
    "BasicBlock",
    "Bottleneck",
    "ResNetBranch",
    "StagedBranch",
    "TwoViewEncoder",
    "alexnet",
    "build_model",
    "l2_normalize",
    "resnet",
]
