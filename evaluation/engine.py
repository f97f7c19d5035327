"""The unit loop's steps, in CMC's vocabulary: `set_model`, `set_optimizer`, `train` (one epoch),
`reestimate_batch_norm`, `predict`, and `Inputs`, which serves one unit's batches.

A unit (a LOSO subject or a k-fold fold) trains a fresh classifier on its training samples and
predicts its test samples. Its encoder is a copy of the run's starting encoder (the checkpoint's
weights, or a random init drawn from the seed); its head, batch order and augmentation are drawn
from the unit's own seed, so a unit's result depends on neither its shard nor the units before it,
and two encoders evaluated with one `--seed` share all of them (a paired comparison).
"""
from __future__ import annotations

import argparse
import copy
import math
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import dataset
import util
from models import TwoViewEncoder, build_model
from models.LinearModel import AttentionHead, Classifier, FeatureExtractor, make_head
from models.pretrained import EncoderSpec

from . import metrics, runs


def unit_seed(seed: int, unit: str) -> int:
    """A seed for one unit that does not depend on which units ran before in the process."""
    return zlib.crc32(f"{seed}:{unit}".encode())


@dataclass
class StartingPoint:
    """The encoder every unit of one seed starts from (never trained: units train copies), and,
    when units train heads on frozen features, those features (N, D) of every store sample; with
    `--lr_by_norm`, the norm of each parameter of a fresh random init of the architecture."""
    encoder: TwoViewEncoder
    features: Tensor | None = None
    fresh_norms: dict[str, float] | None = None


def uses_cached_features(args: argparse.Namespace) -> bool:
    """A frozen encoder without augmentation gives each sample the same features in every epoch,
    so they are extracted once per run and units train their heads on them. An attention head
    needs the unpooled maps, which are re-computed instead of held for every sample."""
    return args.freeze_encoder and not args.augment and args.attention == "none"


def new_extractor(args: argparse.Namespace, encoder: TwoViewEncoder, device: torch.device) -> FeatureExtractor:
    """A fresh copy of `encoder` (the same weights, never a new init) wrapped at `--layer`, on
    `device`, channels-last like pre-training; it gives maps for an attention head."""
    copied = copy.deepcopy(encoder).requires_grad_(True)
    return FeatureExtractor(copied.to(device, memory_format=torch.channels_last), args.layer,
                            views=1 if args.view == "RGB" else 2, maps=args.attention == "att")


@dataclass
class RunData:
    """What every unit of a run reads: the decoded samples, their labels (N,) on `device`, the
    train and test transforms."""
    store: dataset.ImageStore
    labels: Tensor
    n_classes: int
    device: torch.device
    train_transform: dataset.PairAugment
    test_transform: dataset.PairAugment

    def images(self, index: Tensor, train: bool, generator: torch.Generator | None = None) -> Tensor:
        """Network input (B,4,H,W) of store samples `index` (B,) on the host: augmented or the test
        transform."""
        transform = self.train_transform if train else self.test_transform
        return transform(*self.store.batch(index, self.device), generator=generator)


class Inputs:
    """One unit's batches on the run's device: cached features (B, D) of a frozen encoder, or
    images (B,4,H,W) from the store, augmented (training batches, with `augment`) or under the test
    transform. Batch order and augmentation draw from the unit's generator."""

    def __init__(self, args: argparse.Namespace, data: RunData, start: StartingPoint, unit: str,
                 train: np.ndarray, test: np.ndarray, seed: int) -> None:
        self.data, self.features, self.name = data, start.features, f"seed{seed}/{unit}"
        self.batch_size, self.augment = args.batch_size, args.augment
        self.seed = unit_seed(seed, unit)
        train, validation = hold_out_subjects(train, [s.subject for s in data.store.samples], args.val_subjects,
                                              self.seed)
        self.train_index, self.test_index = torch.as_tensor(train), torch.as_tensor(test)
        self.val_index = torch.as_tensor(validation)
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def device(self) -> torch.device:
        return self.data.device

    def _fetch(self, host_index: Tensor, device_index: Tensor, train: bool) -> Tensor:
        if self.features is not None:
            return self.features[device_index]
        return self.data.images(host_index, train and self.augment, self.generator if train and self.augment
                                else None)

    def train_epoch(self) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of (inputs, targets (B,)) in a fresh shuffled order; a lone last sample is
        skipped (batch norm needs two). The epoch's indices go to the device in one copy and its
        targets in one gather, so a step only takes slices."""
        batches = [batch for batch in dataset.iterate_batches(len(self.train_index), self.batch_size, True, False,
                                                              self.generator) if len(batch) >= 2]
        epoch_index = self.train_index[torch.cat(batches)] if batches else self.train_index[:0]
        on_device = epoch_index.pin_memory() if self.device.type == "cuda" else epoch_index
        on_device = on_device.to(self.device, non_blocking=True)
        targets = self.data.labels[on_device]
        stop = 0
        for batch in batches:
            begin, stop = stop, stop + len(batch)
            yield self._fetch(epoch_index[begin:stop], on_device[begin:stop], True), targets[begin:stop]

    def labels(self, which: str) -> Tensor:
        """(N,) labels of the `which` ('train', 'val' or 'test') samples, on the device."""
        return self.data.labels[self._index(which).to(self.device)]

    def _index(self, which: str) -> Tensor:
        return {"train": self.train_index, "val": self.val_index, "test": self.test_index}[which]

    def plain(self, which: str) -> Iterator[Tensor]:
        """The `which` ('train', 'val' or 'test') samples in order, in batches, under the test transform."""
        index = self._index(which)
        for batch in dataset.iterate_batches(len(index), self.batch_size, False, False):
            yield self._fetch(index[batch], index[batch].to(self.device), False)


def hold_out_subjects(train: np.ndarray, subjects: list[str], count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`train` (N,) store indices split into (training, validation): the validation part holds every
    sample of `count` of their subjects (`subjects[i]` is store sample i's), drawn from `seed`."""
    if count == 0:
        return train, train[:0]
    present = sorted({subjects[i] for i in train})
    if count >= len(present):
        raise util.UserError(f"--val_subjects {count}: a unit trains on {len(present)} subjects; hold out fewer")
    held = set(np.random.default_rng(seed).choice(present, size=count, replace=False).tolist())
    is_held = np.array([subjects[i] in held for i in train], dtype=bool)
    return train[~is_held], train[is_held]


# ---------------------------------------------------------------------------------------------
# Model, loss, optimizer


def set_model(args: argparse.Namespace, start: StartingPoint, inputs: Inputs, n_classes: int) -> Classifier:
    """A fresh classifier for one unit: a linear head (or the attention head) initialised from the
    unit's seed, on a copy of the starting encoder, or on the cached features alone."""
    extractor = None if start.features is not None else new_extractor(args, start.encoder, inputs.device)
    width = start.features.shape[1] if extractor is None else extractor.out_dim(args.image_size)
    torch.manual_seed(inputs.seed)
    head = (AttentionHead(width, extractor.views, n_classes, args.head_bn) if args.attention == "att"
            else make_head(width, n_classes, args.head_bn))
    return Classifier(head, extractor, frozen=args.freeze_encoder).to(inputs.device)


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


def lr_factor(epoch: int, epochs: int, args: argparse.Namespace) -> float:
    """Learning-rate factor for 0-based `epoch` of `epochs`: cosine to zero, step decays, or 1."""
    if args.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    if args.lr_schedule == "step":
        return util.step_lr(epoch + 1, 1.0, args.lr_decay_epochs, args.lr_decay_rate)
    return 1.0


@dataclass
class Training:
    """One training phase of a unit: its loss, optimizer, gradient scaler and length in epochs,
    and with `--l2sp` the encoder's parameters paired with their starting values."""
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    epochs: int
    anchors: list[tuple[Tensor, Tensor]]


def encoder_layer(name: str) -> int:
    """The encoder layer, counted as `--layer` counts, that the parameter `name` (a key of the
    dual-view encoder: `<view half>.<block>...`) belongs to: alexnet conv_block_k and fc6..8 by
    their number; resnet conv1/bn1 1, layerK K + 1, fc 7."""
    block = name.split(".")[1]
    if block.startswith("conv_block_"):
        return int(block.rsplit("_", 1)[1])
    if block.startswith("layer"):
        return int(block[len("layer"):]) + 1
    return {"conv1": 1, "bn1": 1, "fc": 7}.get(block) or int(block[len("fc"):])


def encoder_groups(args: argparse.Namespace, model: Classifier, start: StartingPoint) -> list[dict]:
    """Parameter groups of a fine-tuned encoder, one per tensor, each at `encoder_lr_mult` times
    `layer_decay` ** (layers below `--layer`) and, with `--lr_by_norm`, (norm / fresh norm) ** 2:
    a weight feeding a batch norm learns at an effective rate of lr / norm ** 2."""
    groups = []
    for name, param in model.extractor.encoder.named_parameters():
        mult = args.encoder_lr_mult * args.layer_decay ** max(0, args.layer - encoder_layer(name))
        if args.lr_by_norm and param.dim() > 1:
            mult *= (float(param.detach().norm()) / start.fresh_norms[name]) ** 2
        groups.append({"params": [param], "lr_mult": mult, "encoder": True,
                       "weight_decay": 0.0 if args.l2sp else args.weight_decay})
    return groups


def set_optimizer(args: argparse.Namespace, model: Classifier, start: StartingPoint, inputs: Inputs, n_classes: int,
                  epochs: int) -> Training:
    """SGD (or Adam) over the head, plus the encoder when it trains (`encoder_groups`), for
    `epochs` epochs of the per-epoch schedule; each group keeps its `base_lr` for the schedule."""
    groups = [{"params": list(model.head.parameters()), "lr_mult": 1.0, "encoder": False}]
    fine_tuned = model.extractor is not None and not model.frozen and args.encoder_lr_mult > 0
    if fine_tuned:
        groups += encoder_groups(args, model, start)
    for group in groups:
        group["base_lr"] = group["lr"] = args.learning_rate * group["lr_mult"]
    if args.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=args.learning_rate, weight_decay=args.weight_decay)
    else:
        optimizer = util.sgd(groups, lr=args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay)
    criterion = make_criterion(args.lossfunction, inputs.labels("train"), n_classes, args.focal_gamma)
    anchors = [(p, p.detach().clone()) for p in model.extractor.encoder.parameters()] if fine_tuned and args.l2sp \
        else []
    return Training(criterion.to(inputs.device), optimizer, util.grad_scaler(args, inputs.device), epochs, anchors)


# ---------------------------------------------------------------------------------------------
# Train, re-estimate, predict


def train(epoch: int, inputs: Inputs, model: Classifier, training: Training, args: argparse.Namespace) -> dict:
    """One epoch (1-based) of `training` at its scheduled learning rate; returns the epoch's mean
    loss, training accuracy and learning rate. Per-step values stay on the device until the epoch
    ends: a read-back would synchronise every step."""
    optimizer = training.optimizer
    warmup = min(1.0, epoch / (args.warmup_epochs + 1))
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * lr_factor(epoch - 1, training.epochs, args) * (
            warmup if group["encoder"] else 1.0)
    lr = optimizer.param_groups[0]["lr"]
    set_train_mode(args, model)
    losses, sizes, logits_seen, targets = [], [], [], []
    for x, target in inputs.train_epoch():
        with util.autocast(inputs.device.type, args.amp, args.opt_level):
            logits = model(x).float()
        loss = training.criterion(logits, target)
        penalty = sum(((p - p0) ** 2).sum() for p, p0 in training.anchors) * (args.l2sp / 2) if training.anchors \
            else 0.0
        optimizer.zero_grad(set_to_none=True)
        training.scaler.scale(loss + penalty).backward()
        training.scaler.step(optimizer)
        training.scaler.update()
        losses.append(loss.detach())
        sizes.append(len(target))
        logits_seen.append(logits.detach())
        targets.append(target)
    mean_loss = float(torch.stack(losses).cpu() @ torch.tensor(sizes, dtype=torch.float32)) / sum(sizes)
    if not math.isfinite(mean_loss):
        raise util.UserError(non_finite_message(epoch, inputs, args))
    train_acc = (torch.cat(logits_seen).argmax(1) == torch.cat(targets)).float().mean().item()
    return {"loss": mean_loss, "train_acc": train_acc, "lr": lr}


def set_train_mode(args: argparse.Namespace, model: Classifier) -> None:
    """Training mode, with the encoder's batch norms kept in eval mode (their statistics frozen)
    under `--encoder_bn frozen`."""
    model.train()
    if args.encoder_bn == "frozen" and model.extractor is not None:
        for module in model.extractor.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


@torch.no_grad()
def validate(args: argparse.Namespace, model: Classifier, inputs: Inputs) -> dict:
    """{'val_uar': UAR of the unit's validation subjects} under the test transform; {} without
    `--val_subjects`."""
    if not len(inputs.val_index):
        return {}
    model.eval()
    predictions = []
    for x in inputs.plain("val"):
        with util.autocast(inputs.device.type, args.amp, args.opt_level):
            predictions.append(model(x).float().argmax(1).cpu())
    labels = inputs.labels("val").cpu().numpy()
    return {"val_uar": metrics.compute_metrics(labels, torch.cat(predictions).numpy(), int(labels.max()) + 1)["uar"]}


class BestEpoch:
    """Early stopping: keeps the weights of the epoch of highest validation UAR (the first of ties);
    without validation, the last epoch's."""

    def __init__(self) -> None:
        self.best: tuple[float, int, dict] | None = None

    def offer(self, epoch: dict, model: Classifier) -> None:
        """`epoch` is the history line just trained (with `val_uar` when there is validation)."""
        if "val_uar" in epoch and (self.best is None or epoch["val_uar"] > self.best[0]):
            self.best = (epoch["val_uar"], epoch["epoch"], copy.deepcopy(model.state_dict()))

    def restore(self, model: Classifier) -> int | None:
        """Load the best epoch's weights; returns that epoch (None: the last epoch stays)."""
        if self.best is None:
            return None
        model.load_state_dict(self.best[2])
        return self.best[1]


def non_finite_message(epoch: int, inputs: Inputs, args: argparse.Namespace) -> str:
    """Why a unit's loss went non-finite: the learning rate is blamed only when the inputs are
    finite; non-finite inputs (bad normalisation flags, overflowing features) fail at any rate."""
    finite = all(bool(torch.isfinite(x).all()) for x in inputs.plain("train"))
    return f"{inputs.name}: non-finite loss at epoch {epoch}; " + (
        f"its inputs are finite, so the weights diverged: lower --learning_rate ({args.learning_rate:g}) or check "
        "the encoder checkpoint" if finite else
        "its inputs already hold NaN or infinite values (check --rgb_std/--depth_std and the encoder checkpoint; "
        "a lower --learning_rate will not help)")


@torch.no_grad()
def reestimate_batch_norm(args: argparse.Namespace, model: Classifier, inputs: Inputs) -> None:
    """With `--bn_stats training_set`, replace the running statistics of every batch norm that
    trains (the head's; the encoder's unless frozen) by their mean over the unit's training samples,
    in batches of `--batch_size`, under the test transform, as the test samples will be seen.

    PyTorch's running averages start at mean 0 and variance 1 and keep 0.9 ** steps of that start:
    after the 60-90 steps of a few hundred labeled samples, a feature of variance 1e-4 (a random
    encoder's are that small) is still standardised as if its variance were 1e-3 or more, so at
    test time its values shrink towards zero and the head's bias decides.
    """
    if args.bn_stats != "training_set":
        return
    set_train_mode(args, model)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.training]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: every batch counts alike
    for x in inputs.plain("train"):
        if len(x) >= 2:
            with util.autocast(inputs.device.type, args.amp, args.opt_level):
                model(x)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


@torch.no_grad()
def predict(args: argparse.Namespace, model: Classifier, inputs: Inputs) -> np.ndarray:
    """Predicted classes (N_test,) of the unit's test samples under the test transform."""
    model.eval()
    out = []
    for x in inputs.plain("test"):
        with util.autocast(inputs.device.type, args.amp, args.opt_level):
            out.append(model(x).float().argmax(1).cpu())
    return torch.cat(out).numpy()


def assert_unchanged(encoder: nn.Module, state: dict[str, Tensor], what: str) -> None:
    """Raise RuntimeError if any parameter or buffer of `encoder` differs from `state`."""
    changed = [k for k, v in encoder.state_dict().items() if k in state and not torch.equal(v.cpu(), state[k])]
    if changed:
        raise RuntimeError(f"{what}: the frozen encoder changed ({len(changed)} tensors, e.g. {changed[0]})")


# ---------------------------------------------------------------------------------------------
# The protocol: its units, the run's data, and what a finished unit leaves


@dataclass
class Unit:
    """One LOSO subject or k-fold fold: indices (into the run's ImageStore) to train and test on."""
    name: str
    train: np.ndarray
    test: np.ndarray


def infer_n_classes(args: argparse.Namespace, samples: Sequence[dataset.Sample]) -> int:
    """`--n_label`, else the largest label + 1; every label is checked to be in range."""
    n_classes = args.n_label or max(s.label for s in samples) + 1
    dataset.check_labels(samples, n_classes)
    return n_classes


@dataclass
class Protocol:
    """What a script's protocol is: `samples` are all samples the units index (decoded once),
    `units` the units of this run (all of them, or a `--subjects` subset; `--shard` runs a share),
    `all_units` the names a complete run has; `save_models` is 'head', 'model' or None."""
    name: str
    tool: str
    unit_kind: str
    samples: list[dataset.Sample]
    units: list[Unit]
    all_units: list[str]
    n_classes: int
    class_names: list[str]
    save_models: str | None


class EvaluationRun:
    """One run of a protocol, as a context: claims the run folder, yields this process's pending
    (seed, unit) pairs (finished ones are skipped), serves each unit's `Inputs` and starting
    encoder, saves each finished unit, and on leaving aggregates (`results`), unless it is a shard."""

    def __init__(self, args: argparse.Namespace, spec: EncoderSpec, protocol: Protocol) -> None:
        self.args, self.spec, self.protocol = args, spec, protocol
        self.folder = runs.RunFolder(args, protocol.name)
        self.record = self.folder.claim(protocol.tool, {"protocol": protocol.name, **runs.result_config(args)},
                                        {"unit_kind": protocol.unit_kind, "n_classes": protocol.n_classes,
                                         "class_names": protocol.class_names, "units": protocol.all_units,
                                         "seeds": args.seed_list, "args": runs.args_record(args)})
        self.log = runs.Log(self.folder.root / "log.txt")
        tb_folder = self.folder.tb_folder(args.tb_path)
        try:
            self.writer = SummaryWriter(str(tb_folder))
        except OSError as err:
            raise util.UserError(f"{err.filename or tb_folder}: cannot write here ({err.strerror})") from None
        units = runs.shard_of(protocol.units, args.shard)
        self.pending = [(seed, unit) for seed in args.seed_list for unit in units
                        if not self.folder.is_done(seed, unit.name)]
        self.results: dict = {}
        self.data: RunData | None = None
        self.starts: dict[int, StartingPoint] = {}
        if args.shard is not None:
            self.log(f"shard {args.shard.index}/{args.shard.count}: {', '.join(u.name for u in units) or 'no units'}")
        self.log(f"run {self.folder.root} (git {util.git_revision()}): {len(self.pending)} units to run, "
                 f"{len(args.seed_list) * len(units) - len(self.pending)} already done")

    def __enter__(self) -> "EvaluationRun":
        return self

    def units(self) -> Iterator[tuple[int, Unit]]:
        """The pending (seed, unit) pairs, with a progress bar; the data are decoded before the first."""
        if not self.pending:
            return
        self._load()
        bar = tqdm(self.pending, desc=self.protocol.name, unit="unit", disable=self.args.no_progress)
        with threads_for_unit_training(self.args, self.data.device):
            for seed, unit in bar:
                bar.set_postfix(seed=seed, unit=unit.name)
                self.begin = time.time()
                yield seed, unit
        bar.close()

    def _load(self) -> None:
        args, protocol = self.args, self.protocol
        util.keep_freed_memory()
        device = runs.eval_device(args)
        self.log(f"encoder {self.spec.name} from {self.spec.source}, layer {args.layer}, "
                 f"{'frozen' if args.freeze_encoder else 'fine-tuned'}, on {device}")
        store = dataset.ImageStore(protocol.samples, args.load_size, args.cache_dir, args.num_workers,
                                   progress=not args.no_progress)
        self.data = RunData(store, torch.tensor([s.label for s in protocol.samples]).to(device), protocol.n_classes,
                            device, dataset.augment_from_args(args, train=True),
                            dataset.augment_from_args(args, train=False))

    def start(self, seed: int) -> StartingPoint:
        """The encoder units of `seed` start from: a checkpoint's is shared by every seed, a random one
        drawn from each; its features are extracted here when units train on them."""
        key = seed if self.spec.state is None else -1
        if key not in self.starts:
            start = StartingPoint(self.spec.build(seed).requires_grad_(False))
            if self.args.lr_by_norm:
                with torch.random.fork_rng():
                    fresh = build_model(self.spec.name, self.spec.feat_dim)
                start.fresh_norms = {name: float(p.detach().norm()) for name, p in fresh.named_parameters()}
            if uses_cached_features(self.args):
                start.features = extract_features(self.args, start, self.data)
                self.log(f"extracted {tuple(start.features.shape)} features once "
                         f"(layer {self.args.layer}, frozen {self.spec.name})")
            self.starts[key] = start
        return self.starts[key]

    def inputs(self, seed: int, unit: Unit) -> Inputs:
        """The batches of `unit` under `seed`."""
        return Inputs(self.args, self.data, self.start(seed), unit.name, unit.train, unit.test, seed)

    def save(self, seed: int, unit: Unit, model: Classifier, predictions: np.ndarray, history: list[dict]) -> None:
        """Write the finished unit's record (its predictions and training history), TensorBoard
        curves and, with `save_models`, its head or classifier."""
        if model.extractor is not None and self.args.freeze_encoder:
            assert_unchanged(model.extractor.encoder, self.start(seed).encoder.state_dict(), f"unit {unit.name}")
        samples = [self.data.store.samples[i] for i in unit.test]
        record = {"unit": unit.name, "seed": seed, "n_train": len(unit.train), "n_test": len(unit.test),
                  "test_subjects": sorted({s.subject for s in samples}),
                  "keys": [s.key for s in samples], "subjects": [s.subject for s in samples],
                  "labels": [s.label for s in samples], "dbtypes": [s.dbtype for s in samples],
                  "predictions": predictions.tolist(), "history": history,
                  "seconds": round(time.time() - self.begin, 3)}
        if model.extractor is not None and not self.args.freeze_encoder:
            record["encoder_change"] = encoder_change(model.extractor.encoder, self.start(seed).encoder)
        for epoch in history:
            for name in ("loss", "train_acc", "lr"):
                self.writer.add_scalar(f"seed{seed}/{unit.name}/{name}", epoch[name], epoch["epoch"])
        if self.protocol.save_models is not None:
            module = model.head if self.protocol.save_models == "head" else model
            util.atomic_save({"model": module.state_dict(), "unit": unit.name, "seed": seed, "layer": self.args.layer,
                              "encoder": self.spec.name, "n_classes": self.protocol.n_classes},
                             self.folder.root / "models" / f"seed{seed}_{unit.name}.pth")
        self.folder.save_unit(record)
        acc = float(np.mean(predictions == np.array(record["labels"])))
        self.log(f"seed {seed} {unit.name}: {len(unit.train)} train / {len(unit.test)} test, test acc {acc:.4f}, "
                 f"final train loss {history[-1]['loss']:.4f}, {record['seconds']:.1f} s")

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is not None:
                return
            if self.args.shard is not None:
                self.log(f"shard {self.args.shard.index}/{self.args.shard.count} finished; pool all shards with "
                         "--aggregate_only")
                return
            self.results = metrics.aggregate(self.folder, self.record, [u.name for u in self.protocol.units],
                                             self.writer)
            self.log(metrics.summary_line(self.results))
            self.log(f"results: {self.folder.root / 'results.json'}")
        finally:
            self.writer.close()
            self.log.close()


@torch.no_grad()
def encoder_change(trained: nn.Module, start: nn.Module) -> dict:
    """How far fine-tuning moved the encoder: ||w - w0|| / ||w0|| over all its weights ('all') and
    per layer (as `--layer` counts), from the starting weights w0."""
    start_params = dict(start.named_parameters())
    moved: dict[int, list[float]] = {}
    for name, param in trained.named_parameters():
        before = start_params[name].to(param.device)
        moved.setdefault(encoder_layer(name), [0.0, 0.0])
        moved[encoder_layer(name)][0] += float(((param - before) ** 2).sum())
        moved[encoder_layer(name)][1] += float((before ** 2).sum())
    total = [sum(v[i] for v in moved.values()) for i in (0, 1)]
    return {"all": (total[0] / total[1]) ** 0.5,
            "layers": {str(k): (v[0] / v[1]) ** 0.5 for k, v in sorted(moved.items()) if v[1] > 0}}


@torch.no_grad()
def extract_features(args: argparse.Namespace, start: StartingPoint, data: RunData) -> Tensor:
    """(N, D) features of every store sample with the frozen encoder and the test transform."""
    extractor = new_extractor(args, start.encoder, data.device).eval()
    chunks = []
    for index in dataset.iterate_batches(len(data.store), args.batch_size, False, False):
        with util.autocast(data.device.type, args.amp, args.opt_level):
            chunks.append(extractor(data.images(index, train=False)).float())
    assert_unchanged(extractor.encoder, start.encoder.state_dict(), "feature extraction")
    return torch.cat(chunks)


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


def aggregate_only(args: argparse.Namespace, protocol: str, units: Sequence[str] | None = None) -> dict:
    """`--aggregate_only`: pooled metrics of `units` (default all) of the run folder the flags
    name, nothing trained."""
    folder = runs.RunFolder(args, protocol)
    results = metrics.aggregate(folder, folder.record(), units)
    print(metrics.summary_line(results))
    print(f"results: {folder.root / 'results.json'}")
    return results
