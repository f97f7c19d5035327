"""Loading a pre-trained DVSCL encoder: this suite's checkpoints, the published DVSCL/CMC ones, or none.

`load_encoder_spec(path)` reads a checkpoint safely (`weights_only`), checks its encoder keys
exactly against the architecture it records, and returns an `EncoderSpec` from which every
evaluation unit builds a fresh encoder.
"""
from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from util import UserError, load_checkpoint

from . import MODEL_NAMES, build_model
from .common import TwoViewEncoder

PUBLISHED_PREFIXES = ("encoder.module.", "module.", "encoder.")
# The input statistics a pre-training checkpoint records; evaluation defaults to them.
NORMALISATION = ("rgb_mean", "rgb_std", "depth_mean", "depth_std")


@dataclass
class EncoderSpec:
    """What a fresh encoder is built from.

    `state` holds clean keys (`rgb_to_d.…`, `d_to_rgb.…`); None means random initialisation,
    drawn from the run's seed. `image_size` and `normalisation` (rgb_mean, rgb_std, depth_mean,
    depth_std) are the pre-training input size and statistics and `view` its `--view`, where the
    checkpoint records them; `digest` is the checkpoint file's SHA-1 ('' for random).
    """
    name: str
    feat_dim: int
    state: dict[str, Tensor] | None
    source: str
    image_size: int | None = None
    normalisation: dict = field(default_factory=dict)
    digest: str = ""
    view: str | None = None

    def build(self, seed: int) -> TwoViewEncoder:
        """A new encoder: the checkpoint's weights, or a random init seeded by `seed`."""
        if self.state is None:
            torch.manual_seed(seed)
        model = build_model(self.name, self.feat_dim)
        if self.state is not None:
            model.load_state_dict(self.state, strict=False)
        return model


def load_encoder_spec(model_path: str, model: str | None = None, feat_dim: int | None = None) -> EncoderSpec:
    """Read a pre-training checkpoint (ours or the published DVSCL/CMC one), or `none` for random.

    The architecture comes from the checkpoint's `args` (ours) or `opt` (published, a pickled
    argparse.Namespace); `model` must agree with it. Encoder keys are matched exactly against the
    architecture (BatchNorm's `num_batches_tracked` counters may be absent); any missing,
    unexpected or wrongly shaped key is a `UserError` naming the file.
    """
    if model_path.lower() == "none":
        name = model or "alexnet"
        return EncoderSpec(name, feat_dim or 128, None, "random", None, {})
    ckpt = load_checkpoint(model_path, allow_namespace=True)
    stored = ckpt.get("args", ckpt.get("opt"))
    stored = vars(stored) if isinstance(stored, argparse.Namespace) else dict(stored or {})
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{model_path}: no 'model' state dict in the checkpoint")
    state = _strip_prefix(state)
    stored_name = stored.get("model")
    if model and stored_name and model != stored_name:
        raise UserError(f"{model_path}: checkpoint holds a {stored_name} encoder, but --model is {model}")
    name = model or stored_name
    if not name:
        raise UserError(f"{model_path}: the checkpoint does not record its architecture; pass --model")
    if name not in MODEL_NAMES:
        raise UserError(f"{model_path}: unknown architecture {name!r} (known: {', '.join(MODEL_NAMES)})")
    feat_dim = feat_dim or stored.get("feat_dim") or _embedding_width(name, state)
    _check_keys(model_path, name, feat_dim, state)
    check_finite(model_path, state)
    image_size = stored.get("image_size")
    normalisation = {k: stored[k] for k in NORMALISATION if stored.get(k) is not None}
    digest = hashlib.sha1(Path(model_path).read_bytes()).hexdigest()
    view = stored.get("view")
    return EncoderSpec(name, int(feat_dim), state, str(model_path),
                       int(image_size) if isinstance(image_size, int) else None, normalisation, digest,
                       view if isinstance(view, str) else None)


def _strip_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the published code's `encoder.module.` (or DataParallel's `module.`) key prefix."""
    for prefix in PUBLISHED_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _embedding_width(name: str, state: dict[str, Tensor]) -> int:
    """feat_dim from the embedding layer's weight (rows), 128 when not found."""
    key = "rgb_to_d.fc8.0.weight" if name == "alexnet" else "rgb_to_d.fc.weight"
    weight = state.get(key)
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else 128


def _check_keys(path: str, name: str, feat_dim: int, state: dict[str, Tensor]) -> None:
    """Every key of `build_model(name, feat_dim)` present with its shape, and nothing else."""
    with torch.device("meta"):
        expected = build_model(name, feat_dim).state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in state
             if k in expected and state[k].shape != expected[k].shape]
    problems = [f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
                for keys, what in ((missing, "missing"), (unexpected, "unexpected"), (wrong, "wrongly shaped"))
                if keys]
    if problems:
        raise UserError(f"{path}: encoder keys do not match {name} (feat_dim {feat_dim}): "
                             + "; ".join(problems))


def check_finite(path: str | Path, state: dict[str, Tensor]) -> None:
    """A `UserError` naming `path` when a floating tensor of `state` holds NaN or infinity (a
    diverged run's weights): every result computed from them would be meaningless."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite values (e.g. {bad[0]}): the run that "
                        "wrote it diverged; use an earlier checkpoint")
