"""Shared evaluation core of LOSO fine-tuning (`finetune.py`) and k-fold linear probing
(`linear_probe.py`).

One mechanism serves both protocols. A protocol is a list of *units* (a LOSO subject or a k-fold
fold), each a set of training and test samples of one decoded `ImageStore`. For every seed and unit
`Evaluator.run_unit` builds a fresh encoder (a copy of the pre-trained or seeded random weights), a
fresh linear head, optimizer, scheduler and loss, trains for a fixed number of epochs (no model or
epoch selection on test data) and predicts the test samples with the deterministic test transform.
With a frozen encoder and no augmentation the features of every sample are extracted once per run
and only the head is trained on them.

Each finished unit is written atomically to `<run>/units/seed<S>/<unit>.json`; re-running the same
command skips finished units, so several processes can share one run folder: `--shard I/N` runs
every N-th unit and writes only unit files. `aggregate` then recomputes the pooled metrics
(accuracy, UF1 = macro F1 and UAR = mean per-class recall over the classes present in the ground
truth, MEGC convention) from the unit files of the run's units, and refuses while any is missing.
"""
from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import io
import json
import math
import os
import re
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator, NamedTuple, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import dataset
import util
from models import MODEL_NAMES, TwoViewEncoder, build_model

# CMC's linear evaluation of AlexNet max-pools conv layer k to this many cells per side.
ALEXNET_POOL_CELLS = {1: 10, 2: 6, 3: 5, 4: 5, 5: 6}
PUBLISHED_PREFIXES = ("encoder.module.", "module.", "encoder.")
RUN_FILE = "run.json"
LOSSES = ("crossentropy", "focal", "balanced")
NORMALISATION = ("rgb_mean", "rgb_std", "depth_mean", "depth_std")
SCHEDULES = ("cosine", "step", "none")
# (rank, world size, local rank) variables of a launcher, tried in order by `--shard auto`.
SHARD_ENVIRONMENTS = (("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class EncoderSpec:
    """What a fresh encoder is built from.

    `state` holds clean keys (`rgb_to_d.…`, `d_to_rgb.…`); None means random initialisation,
    drawn from the run's seed. `image_size` and `normalisation` (rgb_mean, rgb_std, depth_mean,
    depth_std) are the pre-training input size and statistics, where the checkpoint records them;
    `digest` is the checkpoint file's SHA-1 ('' for random).
    """
    name: str
    feat_dim: int
    state: dict[str, Tensor] | None
    source: str
    image_size: int | None = None
    normalisation: dict = field(default_factory=dict)
    digest: str = ""

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
    ckpt = util.load_checkpoint(model_path, allow_namespace=True)
    stored = ckpt.get("args", ckpt.get("opt"))
    stored = vars(stored) if isinstance(stored, argparse.Namespace) else dict(stored or {})
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise util.UserError(f"{model_path}: no 'model' state dict in the checkpoint")
    state = _strip_prefix(state)
    stored_name = stored.get("model")
    if model and stored_name and model != stored_name:
        raise util.UserError(f"{model_path}: checkpoint holds a {stored_name} encoder, but --model is {model}")
    name = model or stored_name
    if not name:
        raise util.UserError(f"{model_path}: the checkpoint does not record its architecture; pass --model")
    if name not in MODEL_NAMES:
        raise util.UserError(f"{model_path}: unknown architecture {name!r} (known: {', '.join(MODEL_NAMES)})")
    feat_dim = feat_dim or stored.get("feat_dim") or _embedding_width(name, state)
    _check_keys(model_path, name, feat_dim, state)
    image_size = stored.get("image_size")
    normalisation = {k: stored[k] for k in NORMALISATION if stored.get(k) is not None}
    digest = hashlib.sha1(Path(model_path).read_bytes()).hexdigest()
    return EncoderSpec(name, int(feat_dim), state, str(model_path),
                       int(image_size) if isinstance(image_size, int) else None, normalisation, digest)


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
        raise util.UserError(f"{path}: encoder keys do not match {name} (feat_dim {feat_dim}): "
                             + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Features and the linear classifier


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


def assert_unchanged(encoder: nn.Module, state: dict[str, Tensor], what: str) -> None:
    """Raise RuntimeError if any parameter or buffer of `encoder` differs from `state`."""
    changed = [k for k, v in encoder.state_dict().items() if k in state and not torch.equal(v.cpu(), state[k])]
    if changed:
        raise RuntimeError(f"{what}: the frozen encoder changed ({len(changed)} tensors, e.g. {changed[0]})")


class FocalLoss(nn.Module):
    """Focal loss: mean over the batch of -(1 - p_t)**gamma * log p_t; logits (B,K), targets (B,)."""

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
        return (-(1 - log_p.exp()) ** self.gamma * log_p).mean()


def make_criterion(name: str, train_labels: Tensor, n_classes: int, gamma: float = 2.0) -> nn.Module:
    """`crossentropy`, `focal`, or `balanced` (cross-entropy weighted by n / (k * count) per
    class, k = classes present in `train_labels` (N,))."""
    if name == "focal":
        return FocalLoss(gamma)
    if name == "balanced":
        counts = torch.bincount(train_labels.cpu(), minlength=n_classes).float()
        present = counts > 0
        weight = torch.zeros(n_classes)
        weight[present] = counts.sum() / (present.sum() * counts[present])
        return nn.CrossEntropyLoss(weight=weight.to(train_labels.device))
    return nn.CrossEntropyLoss()


def make_optimizer(model: Classifier, args: argparse.Namespace) -> torch.optim.Optimizer:
    """SGD (or Adam) over the head, plus the encoder at `lr * encoder_lr_mult` when it is trained.

    Each group carries its `lr_mult`, so a schedule scales both groups alike.
    """
    groups = [{"params": list(model.head.parameters()), "lr_mult": 1.0}]
    if model.extractor is not None and not model.frozen and args.encoder_lr_mult > 0:
        groups.append({"params": list(model.extractor.parameters()), "lr_mult": args.encoder_lr_mult})
    for group in groups:
        group["lr"] = args.learning_rate * group["lr_mult"]
    if args.optimizer == "adam":
        return torch.optim.Adam(groups, lr=args.learning_rate, weight_decay=args.weight_decay)
    return util.sgd(groups, lr=args.learning_rate, momentum=args.momentum,
                    weight_decay=args.weight_decay)


def lr_factor(epoch: int, args: argparse.Namespace) -> float:
    """Learning-rate factor for 0-based `epoch`: cosine to zero over `epochs`, step decays, or 1."""
    if args.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
    if args.lr_schedule == "step":
        return util.step_lr(epoch + 1, 1.0, args.lr_decay_epochs, args.lr_decay_rate)
    return 1.0


# ---------------------------------------------------------------------------------------------
# Metrics


def compute_metrics(labels: Sequence[int], predictions: Sequence[int], n_classes: int) -> dict:
    """Accuracy, UF1 (macro F1) and UAR (mean per-class recall) over the classes present in
    `labels`, and the n_classes x n_classes confusion matrix (rows truth, columns prediction)."""
    labels, predictions = np.asarray(labels, dtype=int), np.asarray(predictions, dtype=int)
    present = sorted(set(labels.tolist()))
    return {
        "acc": float(accuracy_score(labels, predictions)),
        "uf1": float(f1_score(labels, predictions, labels=present, average="macro", zero_division=0)),
        "uar": float(recall_score(labels, predictions, labels=present, average="macro", zero_division=0)),
        "n": int(len(labels)),
        "classes_present": present,
        "confusion": confusion_matrix(labels, predictions, labels=list(range(n_classes))).tolist(),
    }


# ---------------------------------------------------------------------------------------------
# Command line shared by the two evaluation scripts


@dataclass(frozen=True)
class Defaults:
    """Per-script defaults of the shared flags."""
    epochs: int
    learning_rate: float
    batch_size: int
    weight_decay: float
    optimizer: str = "sgd"
    layer: int = 5


def add_eval_args(parser: argparse.ArgumentParser, defaults: Defaults) -> None:
    """Flags common to `fine-tune_CVSCL.py` and `LinearProbing_CVSCL_10fold.py`."""
    group = parser.add_argument_group("encoder")
    group.add_argument("--model_path", type=str, required=True,
                       help="pre-training checkpoint (ours or the published DVSCL/CMC format), or 'none' "
                            "for a randomly initialised encoder (the baseline). --image_size and the "
                            "normalisation flags default to the values the checkpoint was pre-trained with")
    group.add_argument("--model", type=str, default=None, choices=MODEL_NAMES,
                       help="architecture; default: the checkpoint's (alexnet with --model_path none). "
                            "Disagreeing with the checkpoint is an error")
    group.add_argument("--feat_dim", type=int, default=None,
                       help="embedding size; default: the checkpoint's (128 with --model_path none)")
    group.add_argument("--layer", type=int, default=defaults.layer,
                       help="encoder layer whose pooled features feed the linear head: alexnet conv1..5 = "
                            "1..5, fc6 = 6, fc7 = 7, embedding = 8; resnet stem = 1, stages 2..5, pooled = 6, "
                            "embedding = 7")
    group = parser.add_argument_group("training (a fixed budget: no epoch or model is chosen on test data)")
    group.add_argument("--epochs", type=int, default=defaults.epochs)
    group.add_argument("--batch_size", "--batchsize", dest="batch_size", type=int, default=defaults.batch_size)
    group.add_argument("--learning_rate", type=float, default=defaults.learning_rate, help="head learning rate")
    group.add_argument("--no_head_bn", dest="head_bn", action="store_false",
                       help="no BatchNorm (without affine parameters) standardising the features before the "
                            "linear head; without it the probe depends on the scale of the features")
    group.add_argument("--optimizer", choices=("sgd", "adam"), default=defaults.optimizer)
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    group.add_argument("--weight_decay", type=float, default=defaults.weight_decay)
    group.add_argument("--lr_schedule", choices=SCHEDULES, default="cosine",
                       help="per-epoch schedule: cosine to zero, step decays, or constant")
    group.add_argument("--lr_decay_epochs", type=str, default="",
                       help="with --lr_schedule step: epochs after which the lr is multiplied by --lr_decay_rate")
    group.add_argument("--lr_decay_rate", type=float, default=0.1)
    group.add_argument("--lossfunction", choices=LOSSES, default="crossentropy",
                       help="balanced = cross-entropy weighted by inverse class frequency of the training split")
    group.add_argument("--focal_gamma", type=float, default=2.0, help="gamma of --lossfunction focal")
    group.add_argument("--augment", dest="augment", action="store_const", const=True, default=None,
                       help="train on augmented images (random crop, flip, jitter) re-encoded every epoch; "
                            "default: on when the encoder is fine-tuned, off when it is frozen (then features "
                            "are extracted once)")
    group.add_argument("--no_augment", dest="augment", action="store_const", const=False,
                       help="train on the deterministic test transform")
    group.add_argument("--n_label", type=int, default=None,
                       help="number of classes; default: largest label in the lists + 1")
    group.add_argument("--seed", type=int, default=0, help="seed of head init, batch order, augmentation "
                       "(and of the encoder with --model_path none)")
    group.add_argument("--seeds", type=int, default=1,
                       help="repeat the whole protocol with seeds SEED..SEED+N-1; results give mean and std")
    group.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N")
    util.add_amp_args(group)
    group = parser.add_argument_group("output")
    group.add_argument("--save_path", type=str, default="runs/eval",
                       help="run folders (unit results, predictions.csv, results.json, log) go here")
    group.add_argument("--tb_path", type=str, default=None,
                       help="TensorBoard folder; default SAVE_PATH/<run name>/tb")
    group.add_argument("--run_name", type=str, default=None,
                       help="run folder name; default derived from the settings (not from --subjects, so "
                            "processes sharing subjects write one run)")
    group.add_argument("--aggregate_only", action="store_true",
                       help="train nothing: recompute results.json from the unit files of the run folder; "
                            "an error naming them while units of the run are missing")
    group.add_argument("--shard", type=str, default="",
                       help="I/N: run only shard I (0-based, 0 <= I < N) of the units (LOSO subjects after "
                            "--subjects, or k-fold folds), dealt round robin in subName.txt / fold order, and "
                            "write only their unit files (pool them with --aggregate_only). A unit's result "
                            "does not depend on its shard. 'auto': I/N from RANK/WORLD_SIZE (torchrun), else "
                            "SLURM_PROCID/SLURM_NTASKS (srun), each process on cuda:<local rank> when CUDA is "
                            "available and --device is auto or cuda; no process group is formed")
    group.add_argument("--no_progress", action="store_true", help="no progress bars")
    dataset.add_data_args(parser)
    parser.set_defaults(image_size=None, **{k: None for k in NORMALISATION})
    dataset.add_augment_args(parser, crop_low=0.8, jitter=0.0, grayscale_p=0.0)


def finish_eval_args(args: argparse.Namespace) -> EncoderSpec:
    """Validate the shared flags, load the encoder spec, fill derived values (in place).

    `--image_size` and the normalisation statistics default to the checkpoint's pre-training
    values (224 and the data layer's defaults without them).
    """
    if args.epochs < 1:
        raise util.UserError(f"--epochs {args.epochs}: must be at least 1")
    if args.batch_size < 2:
        raise util.UserError(f"--batch_size {args.batch_size}: must be at least 2 (batch norm)")
    if args.seeds < 1:
        raise util.UserError(f"--seeds {args.seeds}: must be at least 1")
    if args.n_label is not None and args.n_label < 2:
        raise util.UserError(f"--n_label {args.n_label}: must be at least 2")
    args.lr_decay_epochs = util.parse_int_list(args.lr_decay_epochs)
    spec = load_encoder_spec(args.model_path, args.model, args.feat_dim)
    args.model, args.feat_dim, args.checkpoint_sha1 = spec.name, spec.feat_dim, spec.digest
    layers = 8 if spec.name == "alexnet" else 7
    if not 1 <= args.layer <= layers:
        raise util.UserError(f"--layer {args.layer}: {spec.name} has layers 1..{layers}")
    if args.image_size is None:
        args.image_size = spec.image_size or 224
    data_defaults = argparse.ArgumentParser()
    dataset.add_data_args(data_defaults)
    for key in NORMALISATION:
        if getattr(args, key) is None:
            setattr(args, key, spec.normalisation.get(key, data_defaults.get_default(key)))
    dataset.finish_data_args(args)
    if args.augment is None:
        args.augment = not args.freeze_encoder
    args.seed_list = [args.seed + i for i in range(args.seeds)]
    resolve_shard(args)
    return spec


def resolve_shard(args: argparse.Namespace) -> None:
    """Replace `args.shard` by (index, count), or None without `--shard`.

    `auto` reads the first launcher of `SHARD_ENVIRONMENTS` found in the environment; with
    `--device auto` or `cuda` and CUDA available the process then runs on cuda:<local rank> modulo
    the visible GPUs (so a task that srun binds to one GPU uses cuda:0).
    """
    text = args.shard
    if not text:
        args.shard = None
        return
    if text == "auto":
        found = [names for names in SHARD_ENVIRONMENTS if names[0] in os.environ and names[1] in os.environ]
        if not found:
            raise util.UserError("--shard auto: neither RANK/WORLD_SIZE (torchrun) nor SLURM_PROCID/SLURM_NTASKS "
                                 "(srun) is set")
        rank, size, local = found[0]
        text = f"{os.environ[rank]}/{os.environ[size]}"
        if args.device in ("auto", "cuda") and torch.cuda.is_available():
            args.device = f"cuda:{int(os.environ.get(local, 0)) % torch.cuda.device_count()}"
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or int(match[1]) >= int(match[2]):
        raise util.UserError(f"--shard {text}: expected I/N with 0 <= I < N (0-based), or auto")
    args.shard = (int(match[1]), int(match[2]))


def shard_of(items: Sequence[T], shard: tuple[int, int] | None) -> list[T]:
    """The items of shard (index, count): items[index], items[index + count], ...; all without one."""
    if shard is None:
        return list(items)
    index, count = shard
    return list(items[index::count])


def default_run_name(args: argparse.Namespace, protocol: str) -> str:
    """`<protocol>_<checkpoint>_<model>_layer<L>_<frozen|ft<mult>>[_aug]_<loss>_lr<lr>_ep<E>_seed<S>[x<N>]`."""
    if args.model_path.lower() == "none":
        source = "random"
    else:
        path = Path(args.model_path)
        source = f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem
    mode = ("frozen" if args.freeze_encoder else f"ft{args.encoder_lr_mult:g}") + ("_aug" if args.augment else "")
    name = (f"{protocol}_{source}_{args.model}_layer{args.layer}_{mode}_{args.lossfunction}"
            f"_lr{args.learning_rate:g}_ep{args.epochs}_seed{args.seed}")
    return name + (f"x{args.seeds}" if args.seeds > 1 else "")


# Flags that do not change a unit's result; everything else must match to share a run folder.
_PROCESS_ONLY = {"subjects", "shard", "list_subjects", "num_workers", "cache_dir", "save_path", "tb_path",
                 "run_name", "aggregate_only", "no_progress", "device", "seeds", "seed_list", "prefixes", "path_prefix",
                 "save_models"}


def result_config(args: argparse.Namespace) -> dict:
    """The settings that determine each unit's result (plain data)."""
    return json.loads(json.dumps({k: v for k, v in sorted(vars(args).items()) if k not in _PROCESS_ONLY},
                                 default=str))


# ---------------------------------------------------------------------------------------------
# Units and the run folder


@dataclass
class Unit:
    """One LOSO subject or k-fold fold: indices (into the run's ImageStore) to train and test on."""
    name: str
    train: np.ndarray
    test: np.ndarray


class RunFolder:
    """`<save_path>/<run name>/`: run.json, units/seed<S>/<unit>.json, predictions.csv, results.json,
    confusion.png, log.txt, saved models.

    run.json records the result-determining settings; a folder holding other settings is refused.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def unit_path(self, seed: int, unit: str) -> Path:
        return self.root / "units" / f"seed{seed}" / f"{unit}.json"

    def is_done(self, seed: int, unit: str) -> bool:
        return self.unit_path(seed, unit).is_file()

    def save_unit(self, record: dict) -> None:
        util.atomic_write_json(self.unit_path(record["seed"], record["unit"]), record)

    def load_units(self) -> list[dict]:
        """Every finished unit record, ordered by seed then unit file name."""
        records = []
        for path in sorted((self.root / "units").glob("seed*/*.json")):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError) as err:
                raise util.UserError(f"{path}: unreadable unit result ({err}); delete it to redo the unit"
                                     ) from None
        return records

    def read_run(self) -> dict:
        path = self.root / RUN_FILE
        if not path.is_file():
            raise util.UserError(f"{path}: no run here (run without --aggregate_only first)")
        return json.loads(path.read_text())

    def claim(self, run: dict) -> None:
        """Write run.json, or check that an existing one has the same settings."""
        path = self.root / RUN_FILE
        if path.is_file():
            old = json.loads(path.read_text())["config"]
            diff = sorted(k for k in set(old) | set(run["config"]) if old.get(k) != run["config"].get(k))
            if diff:
                raise util.UserError(f"{path}: this run folder holds results of other settings "
                                     f"({', '.join(diff[:5])}); use another --save_path or --run_name")
        util.atomic_write_json(path, run)


class Log:
    """Print a line (above any progress bar) and append it to `<run>/log.txt`."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a", buffering=1)

    def __call__(self, message: str) -> None:
        tqdm.write(message)
        self.file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def close(self) -> None:
        self.file.close()


def unit_seed(seed: int, unit: str) -> int:
    """A seed for one unit that does not depend on which units ran before in the process."""
    return zlib.crc32(f"{seed}:{unit}".encode())


# ---------------------------------------------------------------------------------------------
# Training and prediction

# (store indices (B,), training?, generator) -> classifier input: images (B,4,H,W) or features (B,D)
Fetch = Callable[[Tensor, bool, "torch.Generator | None"], Tensor]


class Evaluator:
    """Trains and tests units on one decoded store; the same loop for LOSO and k-fold.

    `labels` (N,) are the store samples' labels. `save_models` 'head' or 'model' saves the trained
    head or the whole classifier of each unit under `model_dir`; None saves nothing.
    """

    def __init__(self, args: argparse.Namespace, spec: EncoderSpec, store: dataset.ImageStore,
                 labels: Tensor, n_classes: int, device: torch.device, log: Log, writer: SummaryWriter,
                 save_models: str | None = None, model_dir: Path | None = None) -> None:
        self.args, self.spec, self.store, self.device = args, spec, store, device
        self.labels = labels.to(device)
        self.n_classes = n_classes
        self.log, self.writer = log, writer
        self.save_models, self.model_dir = save_models, model_dir
        self.train_transform = dataset.augment_from_args(args, train=True)
        self.test_transform = dataset.augment_from_args(args, train=False)
        self.use_features = args.freeze_encoder and not args.augment
        self._features: dict[int, Tensor] = {}
        self._initial: dict[int, TwoViewEncoder] = {}

    def initial_encoder(self, seed: int) -> TwoViewEncoder:
        """The encoder every unit of `seed` starts from (checkpoint, or seeded random), built once
        per run (once per seed for a random encoder) and never trained: units train copies."""
        key = seed if self.spec.state is None else -1
        if key not in self._initial:
            self._initial[key] = self.spec.build(seed).requires_grad_(False)
        return self._initial[key]

    def initial_state(self, seed: int) -> dict[str, Tensor]:
        """The weights and buffers of `initial_encoder(seed)`."""
        return self.initial_encoder(seed).state_dict()

    def new_extractor(self, seed: int) -> FeatureExtractor:
        """A fresh copy of the initial encoder (a copy, not a new random init: cheaper, and the
        same weights), wrapped at `--layer`, on the run's device, channels-last (see
        `pretrain.set_model`)."""
        encoder = copy.deepcopy(self.initial_encoder(seed)).requires_grad_(True)
        return FeatureExtractor(encoder.to(self.device, memory_format=torch.channels_last), self.args.layer)

    def images(self, index: Tensor, train: bool, generator: torch.Generator | None = None) -> Tensor:
        """Network input (B,4,H,W) of store samples `index` (B,): augmented or the test transform."""
        transform = self.train_transform if train and self.args.augment else self.test_transform
        return transform(*self.store.batch(index, self.device), generator=generator)

    @contextmanager
    def head_only_threads(self) -> Iterator[None]:
        """One intra-op thread while a head trains on cached features on the CPU: its operations
        are so small that OpenMP synchronisation dominates (measured 8x slower with 2 threads on a
        busy 2-core machine). Image training keeps torch's thread count."""
        if not (self.use_features and self.device.type == "cpu"):
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def autocast(self) -> ContextManager:
        """torch.autocast with --amp's dtype, else a no-op context."""
        return util.autocast(self.device.type, self.args.amp, self.args.opt_level)

    @torch.no_grad()
    def features(self, seed: int) -> Tensor:
        """(N, D) features of every store sample with the frozen encoder, computed once per run
        (once per seed for a random encoder)."""
        key = seed if self.spec.state is None else -1
        if key not in self._features:
            extractor = self.new_extractor(seed).eval()
            chunks = []
            for index in dataset.iterate_batches(len(self.store), self.args.batch_size, False, False):
                with self.autocast():
                    chunks.append(extractor(self.images(index, train=False)).float())
            assert_unchanged(extractor.encoder, self.initial_state(seed), "feature extraction")
            self._features[key] = torch.cat(chunks)
            self.log(f"extracted {tuple(self._features[key].shape)} features once "
                     f"(layer {self.args.layer}, frozen {self.spec.name})")
        return self._features[key]

    def run_unit(self, unit: Unit, seed: int) -> dict:
        """Train a fresh classifier on `unit.train`, predict `unit.test`; returns the unit record."""
        args, start = self.args, time.time()
        useed = unit_seed(seed, unit.name)
        if len(unit.train) < 2:
            raise util.UserError(f"unit {unit.name}: {len(unit.train)} training samples, need at least 2")
        extractor: FeatureExtractor | None = None
        if self.use_features:
            feats = self.features(seed)
            width = feats.shape[1]
            fetch: Fetch = lambda index, train, generator: feats[index.to(self.device)]  # noqa: E731
        else:
            extractor = self.new_extractor(seed)
            width = extractor.out_dim(args.image_size)
            fetch = self.images
        torch.manual_seed(useed)
        head = make_head(width, self.n_classes, args.head_bn)
        model = Classifier(head, extractor, frozen=args.freeze_encoder).to(self.device)
        generator = torch.Generator().manual_seed(useed)
        train_index, test_index = torch.as_tensor(unit.train), torch.as_tensor(unit.test)
        with self.head_only_threads():
            history = self.fit(model, fetch, train_index, generator, f"seed{seed}/{unit.name}")
            predictions = self.predict(model, fetch, test_index)
        if extractor is not None and args.freeze_encoder:
            assert_unchanged(extractor.encoder, self.initial_state(seed), f"unit {unit.name}")
        self._save_model(model, seed, unit.name)
        samples = [self.store.samples[i] for i in unit.test]
        return {"unit": unit.name, "seed": seed, "n_train": len(unit.train), "n_test": len(unit.test),
                "test_subjects": sorted({s.subject for s in samples}),
                "keys": [s.key for s in samples], "subjects": [s.subject for s in samples],
                "labels": [s.label for s in samples], "predictions": predictions.tolist(),
                "history": history, "seconds": round(time.time() - start, 3)}

    def fit(self, model: Classifier, fetch: Fetch, train_index: Tensor, generator: torch.Generator,
            tag: str) -> list[dict]:
        """Train for `epochs` epochs (per-epoch schedule); returns per-epoch loss, accuracy, lr.

        A lone last sample of an epoch is skipped (batch norm needs two).
        """
        args = self.args
        optimizer = make_optimizer(model, args)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, args))
        criterion = make_criterion(args.lossfunction, self.labels[train_index.to(self.device)],
                                   self.n_classes, args.focal_gamma).to(self.device)
        scaler = torch.amp.GradScaler(self.device.type, enabled=args.amp and args.opt_level == "O1"
                                      and self.device.type == "cuda")
        history = []
        for epoch in range(1, args.epochs + 1):
            model.train()
            lr = optimizer.param_groups[0]["lr"]
            # Per-step values stay tensors until the epoch ends: reading each one back costs
            # more than a step of a linear head on cached features.
            losses, sizes, logits_seen, targets_seen = [], [], [], []
            for batch in dataset.iterate_batches(len(train_index), args.batch_size, True, False, generator):
                if len(batch) < 2:
                    continue
                index = train_index[batch]
                target = self.labels[index.to(self.device)]
                x = fetch(index, True, generator)
                with self.autocast():
                    logits = model(x).float()
                loss = criterion(logits, target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(loss.detach())
                sizes.append(len(batch))
                logits_seen.append(logits.detach())
                targets_seen.append(target)
            mean_loss = float(torch.stack(losses).cpu() @ torch.tensor(sizes, dtype=torch.float32)) / sum(sizes)
            if not math.isfinite(mean_loss):
                raise util.UserError(f"{tag}: non-finite loss at epoch {epoch} (lower --learning_rate)")
            train_acc = (torch.cat(logits_seen).argmax(1) == torch.cat(targets_seen)).float().mean().item()
            scheduler.step()
            history.append({"epoch": epoch, "loss": mean_loss, "train_acc": train_acc, "lr": lr})
            for name in ("loss", "train_acc", "lr"):
                self.writer.add_scalar(f"{tag}/{name}", history[-1][name], epoch)
        return history

    @torch.no_grad()
    def predict(self, model: Classifier, fetch: Fetch, test_index: Tensor) -> np.ndarray:
        """Predicted classes (N,) of `test_index` with the deterministic test transform."""
        model.eval()
        out = []
        for batch in dataset.iterate_batches(len(test_index), self.args.batch_size, False, False):
            with self.autocast():
                out.append(model(fetch(test_index[batch], False, None)).float().argmax(1).cpu())
        return torch.cat(out).numpy()

    def _save_model(self, model: Classifier, seed: int, unit: str) -> None:
        if self.save_models is None:
            return
        module = model.head if self.save_models == "head" else model
        path = self.model_dir / f"seed{seed}_{unit}.pth"
        util.atomic_save({"model": module.state_dict(), "unit": unit, "seed": seed, "layer": self.args.layer,
                          "encoder": self.spec.name, "n_classes": self.n_classes}, path)


# ---------------------------------------------------------------------------------------------
# Aggregation and reporting


class Prediction(NamedTuple):
    """One row of predictions.csv."""
    seed: int
    unit: str
    subject: str
    sample: str
    label: int
    prediction: int


def _pooled(rows: Sequence[Prediction], n_classes: int) -> dict:
    return compute_metrics([r.label for r in rows], [r.prediction for r in rows], n_classes)


def aggregate(run: RunFolder, units: Sequence[str] | None = None, writer: SummaryWriter | None = None) -> dict:
    """Pooled metrics of `units` (default: all of the run's) for every seed of the run; writes
    predictions.csv, results.json and confusion.png.

    A missing unit file is a `UserError` naming the units (nothing is written); a deliberate
    subset passes its `units` and is marked incomplete in results.json.

    acc/UF1/UAR are computed per seed on the predictions of all its units pooled, then averaged
    over seeds (std beside). Per-unit figures and the confusion matrix pool every seed's
    predictions; `n` counts distinct samples. A sample tested twice within one seed is an error.
    """
    info = run.read_run()
    n_classes, kind, seeds = info["n_classes"], info["unit_kind"], info["seeds"]
    units = info["units"] if units is None else list(units)
    wanted = {(seed, unit) for seed in seeds for unit in units}
    records = [r for r in run.load_units() if (r["seed"], r["unit"]) in wanted]
    done = {(r["seed"], r["unit"]) for r in records}
    absent = [unit if len(seeds) == 1 else f"seed{seed}/{unit}" for seed in seeds for unit in units
              if (seed, unit) not in done]
    if absent:
        what = "subject(s)" if kind == "per_subject" else "fold(s)"
        raise util.UserError(f"{run.root}: {len(absent)} of {len(wanted)} {what} not finished "
                             f"({', '.join(absent)}); run their shards again (finished units are skipped) "
                             "before aggregating")
    rows: list[Prediction] = []
    seen: dict[tuple[int, str], str] = {}
    for record in records:
        for key, subject, label, prediction in zip(record["keys"], record["subjects"], record["labels"],
                                                   record["predictions"]):
            if (record["seed"], key) in seen:
                raise util.UserError(f"{run.unit_path(record['seed'], record['unit'])}: sample {key} is also "
                                     f"tested in unit {seen[record['seed'], key]}")
            seen[record["seed"], key] = record["unit"]
            rows.append(Prediction(record["seed"], record["unit"], subject, key, label, prediction))
    per_seed = {}
    for seed in sorted({r.seed for r in rows}):
        metrics = _pooled([r for r in rows if r.seed == seed], n_classes)
        per_seed[str(seed)] = {k: metrics[k] for k in ("acc", "uf1", "uar", "n")}
    units = {}
    for name in sorted({r.unit for r in rows}, key=_natural_key):
        unit_rows = [r for r in rows if r.unit == name]
        metrics = {**_pooled(unit_rows, n_classes), "n": len({r.sample for r in unit_rows})}
        units[name] = ({"acc": metrics["acc"], "n": metrics["n"]} if kind == "per_subject" else
                       {**{k: metrics[k] for k in ("acc", "uf1", "uar", "n")},
                        "subjects": sorted({r.subject for r in unit_rows}, key=_natural_key)})
    pooled = _pooled(rows, n_classes)
    missing = [f"seed{s}/{u}" for s in seeds for u in info["units"] if u not in units]
    results = {"protocol": info["protocol"]}
    for metric in ("acc", "uf1", "uar"):
        values = [m[metric] for m in per_seed.values()]
        results[metric] = float(np.mean(values))
        results[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    results.update({"n_samples": len({r.sample for r in rows}), "seeds": per_seed, kind: units,
                    "class_names": info["class_names"], "classes_present": pooled["classes_present"],
                    "confusion": pooled["confusion"], "complete": not missing, "missing": missing,
                    "args": info["args"], "git_revision": util.git_revision()})
    _write_predictions(run.root / "predictions.csv", rows)
    util.atomic_write_json(run.root / "results.json", results)
    title = f"{info['protocol']}: acc {results['acc']:.3f} UF1 {results['uf1']:.3f} UAR {results['uar']:.3f}"
    plot_confusion(np.array(pooled["confusion"]), info["class_names"], run.root / "confusion.png", title)
    if writer is not None:
        for metric in ("acc", "uf1", "uar"):
            writer.add_scalar(f"pooled/{metric}", results[metric], len(done))
    return results


def _natural_key(name: str) -> tuple:
    """'spNO10' after 'spNO9'; 'fold10' after 'fold9'."""
    digits = "".join(c for c in name if c.isdigit())
    return (name.rstrip("0123456789"), int(digits) if digits else -1, name)


def _write_predictions(path: Path, rows: Sequence[Prediction]) -> None:
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(Prediction._fields)
    out.writerows(rows)
    util.atomic_write_text(path, buffer.getvalue())


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: Path, title: str) -> None:
    """Confusion matrix (K, K) counts as a PNG, rows truth, columns prediction."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2, 1.2 * k + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title(title, fontsize=9)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_line(results: dict) -> str:
    """One line: the pooled metrics (mean ± std over seeds when there are several)."""
    several = len(results["seeds"]) > 1
    parts = [f"{label} {results[m]:.4f}" + (f" ± {results[m + '_std']:.4f}" if several else "")
             for m, label in (("acc", "acc"), ("uf1", "UF1"), ("uar", "UAR"))]
    status = "" if results["complete"] else f" (subset: {len(results['missing'])} units left out)"
    return f"{results['protocol']}: {', '.join(parts)} over {results['n_samples']} predictions{status}"


# ---------------------------------------------------------------------------------------------
# The protocol driver shared by both scripts


@dataclass
class Protocol:
    """What a script hands to `run_protocol`.

    `samples` are all samples the units index (decoded once), `units` the units of this run (all
    of them, or a `--subjects` subset; `--shard` runs a share of them), `all_units` the names a
    complete run has.
    """
    name: str
    unit_kind: str
    samples: list[dataset.Sample]
    units: list[Unit]
    all_units: list[str]
    n_classes: int
    class_names: list[str]
    save_models: str | None


def run_protocol(args: argparse.Namespace, spec: EncoderSpec, protocol: Protocol) -> dict:
    """Run every pending (seed, unit) of this process's shard, then aggregate. Returns the results
    dict; a `--shard` process writes only its unit files and returns {}."""
    run = RunFolder(Path(args.save_path) / (args.run_name or default_run_name(args, protocol.name)))
    args_record = json.loads(json.dumps(vars(args), default=str))
    run.claim({"protocol": protocol.name, "unit_kind": protocol.unit_kind, "config": result_config(args),
               "n_classes": protocol.n_classes, "class_names": protocol.class_names,
               "units": protocol.all_units, "seeds": args.seed_list, "args": args_record})
    log = Log(run.root / "log.txt")
    writer = SummaryWriter(args.tb_path or str(run.root / "tb"))
    try:
        units = shard_of(protocol.units, args.shard)
        if args.shard is not None:
            log(f"shard {args.shard[0]}/{args.shard[1]}: {', '.join(u.name for u in units) or 'no units'}")
        pending = [(seed, unit) for seed in args.seed_list for unit in units if not run.is_done(seed, unit.name)]
        skipped = len(args.seed_list) * len(units) - len(pending)
        log(f"run {run.root} (git {util.git_revision()}): {len(pending)} units to run, {skipped} already done")
        if pending:
            util.keep_freed_memory()
            device = util.pick_device(args.device)
            log(f"encoder {spec.name} from {spec.source}, layer {args.layer}, "
                f"{'frozen' if args.freeze_encoder else 'fine-tuned'}, on {device}")
            store = dataset.ImageStore(protocol.samples, args.load_size, args.cache_dir, args.num_workers,
                                       progress=not args.no_progress)
            labels = torch.tensor([s.label for s in protocol.samples])
            evaluator = Evaluator(args, spec, store, labels, protocol.n_classes, device, log, writer,
                                  protocol.save_models, run.root / "models")
            bar = tqdm(pending, desc=protocol.name, unit="unit", disable=args.no_progress)
            for seed, unit in bar:
                bar.set_postfix(seed=seed, unit=unit.name)
                record = evaluator.run_unit(unit, seed)
                run.save_unit(record)
                acc = float(np.mean(np.array(record["labels"]) == np.array(record["predictions"])))
                log(f"seed {seed} {unit.name}: {record['n_train']} train / {record['n_test']} test, "
                    f"test acc {acc:.4f}, final train loss {record['history'][-1]['loss']:.4f}, "
                    f"{record['seconds']:.1f} s")
            bar.close()
        if args.shard is not None:
            log(f"shard {args.shard[0]}/{args.shard[1]} finished; pool all shards with --aggregate_only")
            return {}
        results = aggregate(run, [u.name for u in protocol.units], writer)
        log(summary_line(results))
        log(f"results: {run.root / 'results.json'}")
        return results
    finally:
        writer.close()
        log.close()


def run_aggregate_only(args: argparse.Namespace, protocol_name: str, units: Sequence[str] | None = None) -> dict:
    """`--aggregate_only`: pooled metrics of `units` (default all) of the run folder the flags
    name, nothing trained."""
    run = RunFolder(Path(args.save_path) / (args.run_name or default_run_name(args, protocol_name)))
    results = aggregate(run, units)
    print(summary_line(results))
    print(f"results: {run.root / 'results.json'}")
    return results


def infer_n_classes(args: argparse.Namespace, samples: Sequence[dataset.Sample]) -> int:
    """`--n_label`, else the largest label + 1; every label is checked to be in range."""
    n_classes = args.n_label or max(s.label for s in samples) + 1
    dataset.check_labels(samples, n_classes)
    return n_classes
