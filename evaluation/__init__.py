"""The evaluation engine shared by LOSO fine-tuning (`fine-tune_CVSCL.py`) and k-fold linear
probing (`LinearProbing_CVSCL_10fold.py`): flags, units, shards, the run folder, unit training and
aggregation. Encoders, heads and checkpoint loading live in `models/`.

One mechanism serves both protocols. A protocol is a list of *units* (a LOSO subject or a k-fold
fold), each a set of training and test samples of one decoded `ImageStore`. For every seed and unit
`train_unit` builds a fresh encoder (a copy of the pre-trained or seeded random weights), a
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
import io
import json
import math
import os
import re
import sys
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator, NamedTuple, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import dataset
import util
from models import MODEL_NAMES, TwoViewEncoder
from models.LinearModel import AttentionHead, Classifier, FeatureExtractor, make_head
from models.pretrained import NORMALISATION, EncoderSpec, load_encoder_spec

from .metrics import compute_metrics, plot_confusion

RUN_FILE = "run.json"
LOSSES = ("crossentropy", "focal", "balanced", "cosine")
SCHEDULES = ("cosine", "step", "none")
# (rank, world size, local rank) variables of a launcher, tried in order by `--shard auto`.
SHARD_ENVIRONMENTS = (("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Training a unit


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


class CosineLoss(nn.Module):
    """The published `cosine` loss: mean over the batch of 1 - cos(logits, one-hot target), i.e.
    1 - logits[target] / ||logits||; logits (B,K), targets (B,)."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        cosine = logits.gather(1, target[:, None])[:, 0] / logits.norm(dim=1).clamp_min(1e-12)
        return (1 - cosine).mean()


def make_criterion(name: str, train_labels: Tensor, n_classes: int, gamma: float = 2.0) -> nn.Module:
    """`crossentropy`, `focal`, `cosine`, or `balanced` (cross-entropy weighted by n / (k * count)
    per class, k = classes present in `train_labels` (N,))."""
    if name == "focal":
        return FocalLoss(gamma)
    if name == "cosine":
        return CosineLoss()
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
    group.add_argument("--bn_stats", choices=("training_set", "running"), default="training_set",
                       help="batch-norm statistics at test time: training_set re-estimates, after the last epoch, "
                            "the mean and variance of every batch norm that trained (the head's, and the "
                            "encoder's when fine-tuned) over the training samples under the test transform; "
                            "running keeps PyTorch's running averages, which after the few dozen steps of a "
                            "small labeled set still carry their start at mean 0 / variance 1 "
                            "(docs/evaluation-recipe.md)")
    group.add_argument("--optimizer", choices=("sgd", "adam"), default=defaults.optimizer)
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    group.add_argument("--weight_decay", type=float, default=defaults.weight_decay)
    group.add_argument("--lr_schedule", choices=SCHEDULES, default="cosine",
                       help="per-epoch schedule: cosine to zero, step decays, or constant")
    group.add_argument("--lr_decay_epochs", type=str, default="",
                       help="with --lr_schedule step: epochs after which the lr is multiplied by --lr_decay_rate")
    group.add_argument("--lr_decay_rate", type=float, default=0.1)
    group.add_argument("--lossfunction", choices=LOSSES, default="crossentropy",
                       help="balanced = cross-entropy weighted by inverse class frequency of the training split; "
                            "cosine = 1 - cosine of the logits and the one-hot label (the published option)")
    group.add_argument("--attention", choices=("none", "att"), default="none",
                       help="att: channel and spatial attention on each view's map before pooling and the linear "
                            "layer (the published head; ResNet conv layers 1..5 only)")
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
    util.process_only(group.add_argument("--seeds", type=int, default=1,
                                         help="repeat the whole protocol with seeds SEED..SEED+N-1; results give mean"
                                              " and std"))
    util.process_only(group.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N"))
    util.add_amp_args(group)
    group = parser.add_argument_group("output")
    util.process_only(group.add_argument("--save_path", type=str, default="runs/eval",
                                         help="run folders (unit results, predictions.csv, results.json, log) go here"))
    util.process_only(group.add_argument("--tb_path", type=str, default=None,
                                         help="TensorBoard files go to TB_PATH/<run name>; default "
                                              "SAVE_PATH/<run name>/tb"))
    util.process_only(group.add_argument("--run_name", type=str, default=None,
                                         help="run folder name; default derived from the settings (not from "
                                              "--subjects, so processes sharing subjects write one run)"))
    util.process_only(group.add_argument("--aggregate_only", action="store_true",
                                         help="train nothing: recompute results.json from the unit files of the run "
                                              "folder; an error naming them while units of the run are missing"))
    util.process_only(group.add_argument("--shard", type=parse_shard, default="",
                                         help="I/N: run only shard I (0-based, 0 <= I < N) of the units (LOSO "
                                              "subjects after --subjects, or k-fold folds), dealt round robin in "
                                              "subName.txt / fold order, and write only their unit files (pool them "
                                              "with --aggregate_only). A unit's result does not depend on its shard. "
                                              "'auto': I/N from RANK/WORLD_SIZE (torchrun), else "
                                              "SLURM_PROCID/SLURM_NTASKS (srun), each process on cuda:<local rank> "
                                              "when CUDA is available and --device is auto or cuda; no process group "
                                              "is formed"))
    util.process_only(group.add_argument("--no_progress", action="store_true", help="no progress bars"))
    dataset.add_data_args(parser, views=("RGB_D", "RGB_gray", "RGB"))
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
    util.check_numbers(args, positive=("learning_rate",),
                       non_negative=("momentum", "weight_decay", "focal_gamma", "encoder_lr_mult", "lp_epochs"))
    args.lr_decay_epochs = util.parse_int_list(args.lr_decay_epochs)
    spec = load_encoder_spec(args.model_path, args.model, args.feat_dim)
    args.model, args.feat_dim, args.checkpoint_sha1 = spec.name, spec.feat_dim, spec.digest
    layers = 8 if spec.name == "alexnet" else 7
    if not 1 <= args.layer <= layers:
        raise util.UserError(f"--layer {args.layer}: {spec.name} has layers 1..{layers}")
    if args.attention == "att" and (spec.name == "alexnet" or args.layer > 5):
        raise util.UserError(f"--attention att --layer {args.layer}: attention needs a ResNet conv map "
                             f"(--layer 1..5); {spec.name} layer {args.layer} has none")
    if args.image_size is None:
        args.image_size = spec.image_size or 224
    data_defaults = argparse.ArgumentParser()
    dataset.add_data_args(data_defaults)
    for key in NORMALISATION:
        if getattr(args, key) is None:
            setattr(args, key, spec.normalisation.get(key, data_defaults.get_default(key)))
    if spec.view and args.view != "RGB" and spec.view != args.view:
        print(f"warning: {spec.source} was pre-trained with --view {spec.view}, evaluated with --view {args.view}: "
              "its second encoder meets another kind of image", file=sys.stderr)
    dataset.finish_data_args(args)
    if args.augment is None:
        args.augment = not args.freeze_encoder
    args.seed_list = [args.seed + i for i in range(args.seeds)]
    return spec


class Shard(NamedTuple):
    """Shard `index` of `count` (0-based). `local_rank` is the launcher's rank on this node, known
    under `--shard auto` only."""
    index: int
    count: int
    local_rank: int | None = None


def parse_shard(text: str) -> Shard | None:
    """`--shard`: '' -> None, 'I/N' -> Shard(I, N), 'auto' -> the shard of the first launcher of
    `SHARD_ENVIRONMENTS` found in the environment."""
    if not text:
        return None
    local = None
    if text == "auto":
        found = [names for names in SHARD_ENVIRONMENTS if names[0] in os.environ and names[1] in os.environ]
        if not found:
            raise util.UserError("--shard auto: neither RANK/WORLD_SIZE (torchrun) nor SLURM_PROCID/SLURM_NTASKS "
                                 "(srun) is set")
        rank, size, local_name = found[0]
        text, local = f"{os.environ[rank]}/{os.environ[size]}", int(os.environ.get(local_name, 0))
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or int(match[1]) >= int(match[2]):
        raise util.UserError(f"--shard {text}: expected I/N with 0 <= I < N (0-based), or auto")
    return Shard(int(match[1]), int(match[2]), local)


def eval_device(args: argparse.Namespace) -> torch.device:
    """The device `--device` names; under `--shard auto`, with `--device auto` or `cuda` and CUDA
    available, cuda:<local rank> modulo the visible GPUs (so a task srun binds to one GPU uses cuda:0)."""
    if args.shard is not None and args.shard.local_rank is not None and args.device in ("auto", "cuda") \
            and torch.cuda.is_available():
        return torch.device("cuda", args.shard.local_rank % torch.cuda.device_count())
    return util.pick_device(args.device)


def shard_of(items: Sequence[T], shard: Shard | None) -> list[T]:
    """The items of `shard`: items[index], items[index + count], ...; all of them without one."""
    if shard is None:
        return list(items)
    return list(items[shard.index::shard.count])


def default_run_name(args: argparse.Namespace, protocol: str) -> str:
    """`<protocol>_<checkpoint>_<model>_layer<L>_<frozen|ft<mult>>[_aug][_att][_view<view>]_<loss>_lr<lr>
    _ep<E>_seed<S>[x<N>]` (without the line break); the view appears unless it is RGB_D."""
    if args.model_path.lower() == "none":
        source = "random"
    else:
        path = Path(args.model_path)
        source = f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem
    mode = (("frozen" if args.freeze_encoder else f"ft{args.encoder_lr_mult:g}") + ("_aug" if args.augment else "")
            + ("_att" if args.attention == "att" else "") + ("" if args.view == "RGB_D" else f"_view{args.view}"))
    name = (f"{protocol}_{source}_{args.model}_layer{args.layer}_{mode}_{args.lossfunction}"
            f"_lr{args.learning_rate:g}_ep{args.epochs}_seed{args.seed}")
    return name + (f"x{args.seeds}" if args.seeds > 1 else "")


def result_config(args: argparse.Namespace) -> dict:
    """The settings that determine each unit's result (plain data): every value but the flags
    declared `util.process_only` and the values derived from them (`seed_list`: each unit is
    trained and stored per seed; `prefixes`: how list paths are found, not which images they are)."""
    return util.run_identity(args, exclude={"seed_list", "prefixes"})


# ---------------------------------------------------------------------------------------------
# Units and the run folder


@dataclass
class Unit:
    """One LOSO subject or k-fold fold: indices (into the run's ImageStore) to train and test on."""
    name: str
    train: np.ndarray
    test: np.ndarray


# what a run folder made before a setting was recorded was made with
SETTINGS_BEFORE_RECORDED = {"bn_stats": "running", "lp_epochs": 0}


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
            old = {**SETTINGS_BEFORE_RECORDED, **json.loads(path.read_text())["config"]}
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


@dataclass
class EvalData:
    """What every unit of a run reads: the decoded samples, their labels (N,) on `device`, and the
    train and test transforms."""
    store: dataset.ImageStore
    labels: Tensor
    n_classes: int
    device: torch.device
    train_transform: dataset.PairAugment
    test_transform: dataset.PairAugment

    def images(self, index: Tensor, train: bool, generator: torch.Generator | None = None) -> Tensor:
        """Network input (B,4,H,W) of store samples `index` (B,): augmented or the test transform."""
        transform = self.train_transform if train else self.test_transform
        return transform(*self.store.batch(index, self.device), generator=generator)


@dataclass
class StartingPoint:
    """The encoder every unit of one seed starts from (never trained: units train copies), and,
    when units train heads on frozen features, those features (N, D) of every store sample."""
    encoder: TwoViewEncoder
    features: Tensor | None = None


def uses_cached_features(args: argparse.Namespace) -> bool:
    """A frozen encoder without augmentation gives each sample the same features in every epoch,
    so they are extracted once per run and units train their heads on them. An attention head
    needs the unpooled maps, which are re-computed instead of held for every sample."""
    return args.freeze_encoder and not args.augment and args.attention == "none"


def autocast(args: argparse.Namespace, device: torch.device) -> ContextManager:
    """torch.autocast with --amp's dtype, else a no-op context."""
    return util.autocast(device.type, args.amp, args.opt_level)


def new_extractor(args: argparse.Namespace, start: StartingPoint, device: torch.device) -> FeatureExtractor:
    """A fresh copy of the starting encoder (a copy, not a new random init: the same weights),
    wrapped at `--layer`, on `device`, channels-last like pre-training; it gives maps for an
    attention head."""
    encoder = copy.deepcopy(start.encoder).requires_grad_(True)
    return FeatureExtractor(encoder.to(device, memory_format=torch.channels_last), args.layer,
                            views=1 if args.view == "RGB" else 2, maps=args.attention == "att")


@torch.no_grad()
def extract_features(args: argparse.Namespace, start: StartingPoint, data: EvalData) -> Tensor:
    """(N, D) features of every store sample with the frozen encoder and the test transform."""
    extractor = new_extractor(args, start, data.device).eval()
    chunks = []
    for index in dataset.iterate_batches(len(data.store), args.batch_size, False, False):
        with autocast(args, data.device):
            chunks.append(extractor(data.images(index, train=False)).float())
    assert_unchanged(extractor.encoder, start.encoder.state_dict(), "feature extraction")
    return torch.cat(chunks)


def starting_points(args: argparse.Namespace, spec: EncoderSpec, seeds: Sequence[int], data: EvalData,
                    log: Callable[[str], None]) -> dict[int, StartingPoint]:
    """One starting point per seed: a checkpoint's encoder is shared by every seed, a random one is
    drawn from each seed. Features are extracted here when units use them."""
    built: dict[int | None, StartingPoint] = {}
    points = {}
    for seed in seeds:
        key = seed if spec.state is None else None
        if key not in built:
            start = StartingPoint(spec.build(seed).requires_grad_(False))
            if uses_cached_features(args):
                start.features = extract_features(args, start, data)
                log(f"extracted {tuple(start.features.shape)} features once "
                    f"(layer {args.layer}, frozen {spec.name})")
            built[key] = start
        points[seed] = built[key]
    return points


@contextmanager
def threads_for_unit_training(args: argparse.Namespace, device: torch.device) -> Iterator[None]:
    """One intra-op thread while heads train on cached features on the CPU, torch's setting
    otherwise: a linear head's operations are so small that OpenMP synchronisation would dominate."""
    if not (uses_cached_features(args) and device.type == "cpu"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_unit(args: argparse.Namespace, start: StartingPoint, data: EvalData, unit: Unit,
               seed: int) -> tuple[dict, Classifier]:
    """Train a fresh classifier on `unit.train` and predict `unit.test`; returns the unit record
    and the trained classifier."""
    begin = time.time()
    if len(unit.train) < 2:
        raise util.UserError(f"unit {unit.name}: {len(unit.train)} training samples, need at least 2")
    useed = unit_seed(seed, unit.name)
    extractor: FeatureExtractor | None = None
    if start.features is not None:
        features = start.features
        width = features.shape[1]
        fetch: Fetch = lambda index, train, generator: features[index.to(data.device)]  # noqa: E731
    else:
        extractor = new_extractor(args, start, data.device)
        width = extractor.out_dim(args.image_size)
        fetch = data.images if args.augment else (lambda index, train, generator: data.images(index, False))
    torch.manual_seed(useed)
    head = (AttentionHead(width, extractor.views, data.n_classes, args.head_bn) if args.attention == "att"
            else make_head(width, data.n_classes, args.head_bn))
    model = Classifier(head, extractor, frozen=args.freeze_encoder).to(data.device)
    generator = torch.Generator().manual_seed(useed)
    train_index, test_index = torch.as_tensor(unit.train), torch.as_tensor(unit.test)
    tag = f"seed{seed}/{unit.name}"
    history = []
    if args.lp_epochs and not args.freeze_encoder:
        # LP-FT: the head first learns on the pre-trained features, so that fine-tuning starts from a
        # head that fits them instead of sending a random head's gradients into the encoder
        model.set_frozen(True)
        history = fit(argparse.Namespace(**{**vars(args), "epochs": args.lp_epochs}), model, fetch, data,
                      train_index, generator, tag)
        model.set_frozen(False)
    on_device = start.features is not None
    history += [{**epoch, "epoch": epoch["epoch"] + len(history)} for epoch in fit(
        args, model, fetch, data, train_index, generator, tag, fetch_on_device=on_device)]
    if args.bn_stats == "training_set":
        reestimate_batch_norm(args, model, fetch, data, train_index.to(data.device) if on_device else train_index)
    predictions = predict(args, model, fetch, data.device, test_index)
    if extractor is not None and args.freeze_encoder:
        assert_unchanged(extractor.encoder, start.encoder.state_dict(), f"unit {unit.name}")
    samples = [data.store.samples[i] for i in unit.test]
    record = {"unit": unit.name, "seed": seed, "n_train": len(unit.train), "n_test": len(unit.test),
              "test_subjects": sorted({s.subject for s in samples}),
              "keys": [s.key for s in samples], "subjects": [s.subject for s in samples],
              "labels": [s.label for s in samples], "dbtypes": [s.dbtype for s in samples],
              "predictions": predictions.tolist(),
              "history": history, "seconds": round(time.time() - begin, 3)}
    return record, model


def fit(args: argparse.Namespace, model: Classifier, fetch: Fetch, data: EvalData, train_index: Tensor,
        generator: torch.Generator, tag: str, fetch_on_device: bool = False) -> list[dict]:
    """Train for `--epochs` epochs (per-epoch schedule); returns per-epoch loss, accuracy, lr.

    A lone last sample of an epoch is skipped (batch norm needs two). `fetch` is given the
    batch's indices on the CPU (images come from the store in host memory), or with
    `fetch_on_device` on `data.device` (cached features).
    """
    optimizer = make_optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, args))
    criterion = make_criterion(args.lossfunction, data.labels[train_index.to(data.device)],
                               data.n_classes, args.focal_gamma).to(data.device)
    scaler = torch.amp.GradScaler(data.device.type, enabled=args.amp and args.opt_level == "O1"
                                  and data.device.type == "cuda")
    history = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        # Per-step values stay tensors until the epoch ends: a read-back would synchronise every step.
        losses, sizes, logits_seen = [], [], []
        batches = [batch for batch in dataset.iterate_batches(len(train_index), args.batch_size, True, False,
                                                              generator) if len(batch) >= 2]
        # The epoch's indices go to the device in one copy, and its targets in one gather: a step
        # only takes slices.
        epoch_index = train_index[torch.cat(batches)] if batches else train_index[:0]
        on_device = epoch_index.pin_memory() if data.device.type == "cuda" else epoch_index
        on_device = on_device.to(data.device, non_blocking=True)
        targets = data.labels[on_device]
        stop = 0
        for batch in batches:
            begin, stop = stop, stop + len(batch)
            index = (on_device if fetch_on_device else epoch_index)[begin:stop]
            target = targets[begin:stop]
            x = fetch(index, True, generator)
            with autocast(args, data.device):
                logits = model(x).float()
            loss = criterion(logits, target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.detach())
            sizes.append(len(batch))
            logits_seen.append(logits.detach())
        mean_loss = float(torch.stack(losses).cpu() @ torch.tensor(sizes, dtype=torch.float32)) / sum(sizes)
        if not math.isfinite(mean_loss):
            # Blame the learning rate only when the inputs are finite: non-finite inputs (bad
            # normalisation flags, overflowing features) fail at any learning rate.
            finite = all(bool(torch.isfinite(fetch(train_index[b], False, None)).all())
                         for b in dataset.iterate_batches(len(train_index), args.batch_size, False, False))
            raise util.UserError(
                f"{tag}: non-finite loss at epoch {epoch}; " + (
                    f"its inputs are finite, so the weights diverged: lower --learning_rate "
                    f"({args.learning_rate:g}) or check the encoder checkpoint" if finite else
                    "its inputs already hold NaN or infinite values (check --rgb_std/--depth_std and the "
                    "encoder checkpoint; a lower --learning_rate will not help)"))
        train_acc = (torch.cat(logits_seen).argmax(1) == targets).float().mean().item()
        scheduler.step()
        history.append({"epoch": epoch, "loss": mean_loss, "train_acc": train_acc, "lr": lr})
    return history


@torch.no_grad()
def reestimate_batch_norm(args: argparse.Namespace, model: Classifier, fetch: Fetch, data: EvalData,
                          train_index: Tensor) -> None:
    """Replace the running statistics of every batch norm that trains (the head's; the encoder's
    unless frozen) by their mean over the training samples `train_index` (N,), in batches of
    `--batch_size`, under the test transform, as the test samples will be seen.

    PyTorch's running averages start at mean 0 and variance 1 and keep 0.9 ** steps of that start:
    after the 60-90 steps of a few hundred labeled samples, a feature of variance 1e-4 (a random
    encoder's are that small) is still standardised as if its variance were 1e-3 or more, so at
    test time its values shrink towards zero and the head's bias decides.
    """
    model.train()
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.training]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: every batch counts alike
    for batch in dataset.iterate_batches(len(train_index), args.batch_size, False, False):
        if len(batch) >= 2:
            with autocast(args, data.device):
                model(fetch(train_index[batch], False, None))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


@torch.no_grad()
def predict(args: argparse.Namespace, model: Classifier, fetch: Fetch, device: torch.device,
            test_index: Tensor) -> np.ndarray:
    """Predicted classes (N,) of `test_index` with the deterministic test transform."""
    model.eval()
    out = []
    for batch in dataset.iterate_batches(len(test_index), args.batch_size, False, False):
        with autocast(args, device):
            out.append(model(fetch(test_index[batch], False, None)).float().argmax(1).cpu())
    return torch.cat(out).numpy()


def save_classifier(path: Path, module: nn.Module, args: argparse.Namespace, unit: str, seed: int,
                    encoder: str, n_classes: int) -> None:
    """A unit's trained head or whole classifier, as a state dict with what it was trained for."""
    util.atomic_save({"model": module.state_dict(), "unit": unit, "seed": seed, "layer": args.layer,
                      "encoder": encoder, "n_classes": n_classes}, path)


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
    dbtype: int


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
        # unit files written before they held dbtypes are CAS(ME)^3's
        dbtypes = record.get("dbtypes", [dataset.DBTYPE_CASME3] * len(record["keys"]))
        for key, subject, label, prediction, dbtype in zip(record["keys"], record["subjects"], record["labels"],
                                                           record["predictions"], dbtypes):
            if (record["seed"], key) in seen:
                raise util.UserError(f"{run.unit_path(record['seed'], record['unit'])}: sample {key} is also "
                                     f"tested in unit {seen[record['seed'], key]}")
            seen[record["seed"], key] = record["unit"]
            rows.append(Prediction(record["seed"], record["unit"], subject, key, label, prediction, dbtype))
    per_seed = _per_seed(rows, n_classes)
    units = {}
    for name in sorted({r.unit for r in rows}, key=_natural_key):
        unit_rows = [r for r in rows if r.unit == name]
        metrics = {**_pooled(unit_rows, n_classes), "n": len({r.sample for r in unit_rows})}
        units[name] = ({"acc": metrics["acc"], "n": metrics["n"]} if kind == "per_subject" else
                       {**{k: metrics[k] for k in ("acc", "uf1", "uar", "n")},
                        "subjects": sorted({r.subject for r in unit_rows}, key=_natural_key)})
    pooled = _pooled(rows, n_classes)
    missing = [f"seed{s}/{u}" for s in seeds for u in info["units"] if u not in units]
    results = {"protocol": info["protocol"], **_seed_mean(per_seed)}
    databases = sorted({r.dbtype for r in rows})
    if len(databases) > 1:
        results["per_database"] = {
            dataset.DATABASES.get(db, f"dbtype{db}"): {
                **_seed_mean(_per_seed([r for r in rows if r.dbtype == db], n_classes)),
                "dbtype": db, "n_samples": len({r.sample for r in rows if r.dbtype == db})}
            for db in databases}
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


def _per_seed(rows: Sequence[Prediction], n_classes: int) -> dict[str, dict]:
    """acc/UF1/UAR/n of each seed's predictions pooled (MEGC convention), keyed by seed."""
    per_seed = {}
    for seed in sorted({r.seed for r in rows}):
        metrics = _pooled([r for r in rows if r.seed == seed], n_classes)
        per_seed[str(seed)] = {k: metrics[k] for k in ("acc", "uf1", "uar", "n")}
    return per_seed


def _seed_mean(per_seed: dict[str, dict]) -> dict:
    """Mean and sample std over seeds of acc, UF1 and UAR (std 0 for one seed)."""
    out = {}
    for metric in ("acc", "uf1", "uar"):
        values = [m[metric] for m in per_seed.values()]
        out[metric] = float(np.mean(values))
        out[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return out


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
    tb_folder = Path(args.tb_path) / run.root.name if args.tb_path else run.root / "tb"
    try:
        writer = SummaryWriter(str(tb_folder))
    except OSError as err:
        raise util.UserError(f"{err.filename or tb_folder}: cannot write here ({err.strerror})") from None
    try:
        units = shard_of(protocol.units, args.shard)
        if args.shard is not None:
            log(f"shard {args.shard.index}/{args.shard.count}: {', '.join(u.name for u in units) or 'no units'}")
        pending = [(seed, unit) for seed in args.seed_list for unit in units if not run.is_done(seed, unit.name)]
        skipped = len(args.seed_list) * len(units) - len(pending)
        log(f"run {run.root} (git {util.git_revision()}): {len(pending)} units to run, {skipped} already done")
        if pending:
            util.keep_freed_memory()
            device = eval_device(args)
            log(f"encoder {spec.name} from {spec.source}, layer {args.layer}, "
                f"{'frozen' if args.freeze_encoder else 'fine-tuned'}, on {device}")
            store = dataset.ImageStore(protocol.samples, args.load_size, args.cache_dir, args.num_workers,
                                       progress=not args.no_progress)
            data = EvalData(store, torch.tensor([s.label for s in protocol.samples]).to(device), protocol.n_classes,
                            device, dataset.augment_from_args(args, train=True),
                            dataset.augment_from_args(args, train=False))
            starts = starting_points(args, spec, sorted({seed for seed, _ in pending}), data, log)
            bar = tqdm(pending, desc=protocol.name, unit="unit", disable=args.no_progress)
            with threads_for_unit_training(args, device):
                for seed, unit in bar:
                    bar.set_postfix(seed=seed, unit=unit.name)
                    record, model = train_unit(args, starts[seed], data, unit, seed)
                    for epoch in record["history"]:
                        for name in ("loss", "train_acc", "lr"):
                            writer.add_scalar(f"seed{seed}/{unit.name}/{name}", epoch[name], epoch["epoch"])
                    if protocol.save_models is not None:
                        save_classifier(run.root / "models" / f"seed{seed}_{unit.name}.pth",
                                        model.head if protocol.save_models == "head" else model, args,
                                        unit.name, seed, spec.name, protocol.n_classes)
                    run.save_unit(record)
                    acc = float(np.mean(np.array(record["labels"]) == np.array(record["predictions"])))
                    log(f"seed {seed} {unit.name}: {record['n_train']} train / {record['n_test']} test, "
                        f"test acc {acc:.4f}, final train loss {record['history'][-1]['loss']:.4f}, "
                        f"{record['seconds']:.1f} s")
            bar.close()
        if args.shard is not None:
            log(f"shard {args.shard.index}/{args.shard.count} finished; pool all shards with --aggregate_only")
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
