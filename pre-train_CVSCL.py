"""DVSCL pre-training: one encoder per view, a memory bank per view, NCE or softmax-NCE.

Usage: `python pre-train_CVSCL.py --data_folder DIR --model_path MODELS --tb_path TB` (see README.md).
In CMC's shape: `parse_option`, `set_model`, `set_optimizer`, `train` (one epoch), `main`.

The same code runs in one process (`python pre-train_CVSCL.py`) and in many (`torchrun`): each
rank trains on its own chunk of every global batch of `--batch_size` x world size pairs, DDP
averages the gradients, and the memory banks stay identical on every rank (see `NCE.ContrastMemory`).
Only rank 0 prints, writes TensorBoard, the JSON-lines log and checkpoints.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import dataset
import util
from models import MODEL_NAMES, build_model
from models.pretrained import check_finite
from NCE import ContrastMemory, NCECriterion, NCESoftmaxLoss

CHECKPOINT_FORMAT = "dvscl-pretrain-2"
TOOL = "pre-train_CVSCL.py"
# What a run folder holds besides run.json (what --overwrite removes), and its TensorBoard folder.
RUN_OWNS = ("last.pth", "ckpt_epoch_*.pth", "log.jsonl")
TB_OWNS = ("events.out.tfevents.*",)
# Settings a resume may change: it may train a run for more epochs.
RESUMABLE = ("epochs",)
STAT_NAMES = ("loss", "rgb_loss", "depth_loss", "rgb_prob", "depth_prob")


def parse_option(argv: list[str] | None = None) -> argparse.Namespace:
    parser = util.ArgumentParser(
        "pre-train_CVSCL.py", description="DVSCL pre-training on RGB/depth difference-image pairs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    util.process_only(parser.add_argument("--print_freq", type=util.POSITIVE_INT, default=10,
                                          help="steps between read-backs of the step values from the device: "
                                               "progress-bar updates and the non-finite loss check"))
    util.process_only(parser.add_argument("--save_freq", type=util.POSITIVE_INT, default=10,
                                          help="epochs between numbered checkpoints"))
    util.process_only(parser.add_argument("--last_interval", type=util.NON_NEGATIVE, default=300,
                                          help="seconds between saves of last.pth, the resume point, which is "
                                               "also saved with every numbered checkpoint and after the last "
                                               "epoch; 0 = after every epoch"))
    parser.add_argument("--batch_size", type=util.AT_LEAST_TWO, default=128,
                        help="pairs per process and step; the global batch is this times the number of processes")
    parser.add_argument("--epochs", type=util.POSITIVE_INT, default=240, help="epochs over the pool")
    parser.add_argument("--learning_rate", type=util.POSITIVE, default=0.003, help="SGD learning rate (per process; see --scale_lr)")
    parser.add_argument("--lr_decay_epochs", type=str, default="160,200", help="epochs after which the lr decays")
    parser.add_argument("--lr_decay_rate", type=util.POSITIVE, default=0.1, help="factor of each lr decay")
    parser.add_argument("--weight_decay", type=util.NON_NEGATIVE, default=1e-4, help="SGD weight decay")
    parser.add_argument("--momentum", type=util.NON_NEGATIVE, default=0.9, help="SGD momentum")
    parser.add_argument("--scale_lr", action="store_true",
                        help="multiply --learning_rate by the number of processes (linear scaling rule)")
    parser.add_argument("--sync_bn", action="store_true",
                        help="under torchrun on GPUs, batch-norm statistics over the global batch (SyncBatchNorm)")
    util.process_only(parser.add_argument("--resume", type=str, default="", metavar="PATH",
                                          help="checkpoint to continue from"))
    parser.add_argument("--model", type=str, default="alexnet", choices=MODEL_NAMES)
    parser.add_argument("--softmax", action="store_true", help="softmax-NCE (InfoNCE) instead of NCE")
    parser.add_argument("--nce_k", type=util.POSITIVE_INT, default=4096, help="negatives per positive")
    parser.add_argument("--nce_t", type=util.POSITIVE, default=0.07, help="temperature")
    parser.add_argument("--nce_m", type=util.FRACTION, default=0.5, help="memory-bank momentum")
    parser.add_argument("--feat_dim", type=util.POSITIVE_INT, default=128, help="embedding size")
    parser.add_argument("--exclude_self", action="store_true",
                        help="never draw the anchor as its own negative (the original draws uniformly)")
    parser.add_argument("--bank_dtype", choices=["float32", "float16"], default="float32",
                        help="storage type of the memory banks (float16 halves their memory)")
    util.process_only(parser.add_argument("--model_path", type=str, required=True,
                                          help="where run folders with checkpoints go"))
    util.process_only(parser.add_argument("--tb_path", type=str, required=True,
                                          help="where TensorBoard run folders go"))
    util.add_amp_args(parser)
    parser.add_argument("--seed", type=util.SEED, default=0, help="seed of the pool order, augmentation and negatives")
    util.process_only(parser.add_argument("--device", type=str, default="auto",
                                          help="auto, cpu, cuda or cuda:N"))
    parser.add_argument("--intensity_threshold", type=float, default=None,
                        help="keep only pool pairs with intensity >= this (intensity perception)")
    parser.add_argument("--intensity_csv", type=str, default=None, help="CSV with columns key,intensity")
    parser.add_argument("--exclude_subjects", type=str, default="",
                        help="comma-separated subjects (e.g. spNO1) left out of the pool")
    util.process_only(parser.add_argument("--run_name", type=str, default=None,
                                          help="run folder name under MODEL_PATH (and, followed by 8 hex digits "
                                               "naming the run folder, under TB_PATH); default derived from the "
                                               "settings. With --resume of another run's checkpoint: a new run "
                                               "seeded from it"))
    util.process_only(parser.add_argument("--overwrite", action="store_true",
                                          help="start afresh in a run folder that holds a run of these (or other) "
                                               "settings, removing what its run record says it wrote: checkpoints, "
                                               "log, TensorBoard files (without it such a run needs --resume)"))
    dataset.add_data_args(parser)
    dataset.add_augment_args(parser, crop_low=1.0, jitter=0.4, grayscale_p=0.2)
    args = parser.parse_args(argv)
    dataset.finish_data_args(args)
    args.lr_decay_epochs = util.parse_int_list(args.lr_decay_epochs)
    args.method = "softmax" if args.softmax else "nce"
    args.model_name = args.run_name or default_run_name(args)
    args.model_folder = str(Path(args.model_path) / args.model_name)
    # named after the run folder too: runs of one name on other data never share TensorBoard files
    args.tb_folder = str(Path(args.tb_path) / f"{args.model_name}_{util.folder_digest(args.model_folder)}")
    return args


def default_run_name(args: argparse.Namespace) -> str:
    """The published name,
    `memory_<method>_<K>_<model>_lr_<lr>_decay_<wd>_bsz_<B>[_amp_<level>]_view_<view>`, then what
    the README's recipes vary so that they never share a folder:
    `[_int_<threshold>][_excl_<subjects>]_seed<S>` (more than three excluded subjects as their
    count and a digest of the list)."""
    name = (f"memory_{args.method}_{args.nce_k}_{args.model}_lr_{args.learning_rate}"
            f"_decay_{args.weight_decay}_bsz_{args.batch_size}")
    if args.amp:
        name += f"_amp_{args.opt_level}"
    name += f"_view_{args.view}"
    if args.intensity_threshold is not None:
        name += f"_int_{args.intensity_threshold:g}"
    excluded = sorted({dataset.subject_name(s) for s in args.exclude_subjects.split(",") if s.strip()})
    if excluded:
        digest = hashlib.sha1(",".join(excluded).encode()).hexdigest()[:8]
        name += f"_excl_{'-'.join(excluded)}" if len(excluded) <= 3 else f"_excl{len(excluded)}_{digest}"
    return name + f"_seed{args.seed}"


# Values derived from flags, recorded in checkpoints but not part of a run's identity (their flags are).
DERIVED = {"model_name", "model_folder", "tb_folder", "world_size", "prefixes"}


def identity(args: argparse.Namespace) -> dict:
    """The settings that determine the run's result: every flag but the `process_only` ones."""
    return util.run_identity(args, exclude=DERIVED)


def check_resume(args: argparse.Namespace, n_pool: int) -> dict | None:
    """The checkpoint `--resume` names, checked against this command before anything is written.

    It must be a DVSCL pre-training checkpoint of the same model, finite, with a bank row per pool
    pair, and of a run of these settings (`RESUMABLE` aside). A checkpoint of other settings
    starts a new run only when `--run_name` names a folder other than the checkpoint's: the new
    run is seeded from it.
    """
    if not args.resume:
        return None
    path = args.resume
    ckpt = util.load_checkpoint(path)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise util.UserError(f"{path}: not a DVSCL pre-training checkpoint of this version (format "
                             f"{ckpt.get('format')!r}, expected {CHECKPOINT_FORMAT!r})")
    stored = ckpt["args"]
    if stored.get("model") != args.model or stored.get("feat_dim") != args.feat_dim:
        raise util.UserError(f"{path}: checkpoint is {stored.get('model')} feat_dim {stored.get('feat_dim')}, "
                             f"run asks for {args.model} feat_dim {args.feat_dim}")
    run = ckpt["run"]
    here = identity(args)
    differ = util.settings_difference(run["settings"], here, ignore=RESUMABLE)
    new_run = args.run_name is not None and Path(run["folder"]) != Path(args.model_folder).resolve()
    if differ and not new_run:
        raise util.UserError(f"{path}: a checkpoint of a run of other settings ({differ}); to start a new run "
                             "from it, name the new run with --run_name")
    check_finite(path, {**ckpt["model"], **ckpt["contrast"]})
    bank_rows = ckpt["contrast"]["memory_rgb"].shape[0]
    if bank_rows != n_pool:
        raise util.UserError(f"{path}: memory bank has {bank_rows} rows but the pool has {n_pool} pairs "
                             "(same lists and threshold needed)")
    return ckpt


def claim_run_folder(args: argparse.Namespace, ckpt: dict | None) -> tuple[util.RunRecord, util.RunRecord]:
    """The records of the run folder and of its TensorBoard folder, checked and saved (one line
    and nothing written when refused).

    `run.json` records the settings (every flag but the `process_only` ones). A folder made by
    another tool or holding a run of other settings is refused, naming the flags that differ. A
    folder with checkpoints of the same settings needs `--resume` (continue) or `--overwrite`
    (start afresh: its checkpoints and log, and the TensorBoard files of its run, are removed).
    """
    folder, tb_folder = Path(args.model_folder), Path(args.tb_folder)
    settings = identity(args)
    details = {"seeded_from": str(Path(args.resume).resolve())} if ckpt is not None and \
        Path(ckpt["run"]["folder"]) != folder.resolve() else {}
    record = util.claim_folder(folder, TOOL, settings, RUN_OWNS, args.overwrite, details, may_change=RESUMABLE)
    tb_record = util.claim_folder(tb_folder, TOOL, {**settings, "run_folder": str(folder.resolve())}, TB_OWNS,
                                  args.overwrite, may_change=RESUMABLE)
    checkpoints = [p for p in record.owned_entries() if p.suffix == ".pth"]
    if checkpoints and ckpt is None and not args.overwrite:
        raise util.UserError(f"{folder}: holds checkpoints of a run with these settings ({checkpoints[-1].name}); "
                             "pass --resume to continue it or --overwrite to start afresh")
    if record.stale:
        print(f"--overwrite: removing {len(record.stale)} file(s) of the earlier run in {folder} "
              f"and {len(tb_record.stale)} of its TensorBoard folder")
    record.start()
    tb_record.save()
    return record, tb_record


def process_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """Seed of one process's random streams (augmentation, dropout, negative draws).

    `seed + rank` at the start, so rank 0 draws what a single process draws and the other ranks
    draw differently but reproducibly. A resume that cannot restore the saved states (another
    world size) reseeds from the first epoch it trains, so its streams differ from the first run's.
    """
    return seed + rank + 1_000_003 * epoch


def set_model(args: argparse.Namespace, n_data: int, device: torch.device):
    """Encoders, the two-bank memory and the loss, on `device`.

    With `--sync_bn` under a process group, the encoders' batch norms become SyncBatchNorm (same
    parameter and buffer names, so checkpoints load into plain batch norm).
    """
    model = build_model(args.model, feat_dim=args.feat_dim)
    if args.sync_bn and util.is_distributed():
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Channels-last on every device: the layout oneDNN's CPU convolutions and batch norms and
    # cuDNN's tensor-core kernels work in, so no layer converts its activations.
    # Inputs stay NCHW: each view's first convolution converts its channel slice, one copy per
    # view; a channels-last (B,4,H,W) input would cost one more, as its slices are strided.
    model = model.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    contrast = ContrastMemory(args.feat_dim, n_data, args.nce_k, args.nce_t, args.nce_m,
                              softmax=args.softmax, exclude_self=args.exclude_self,
                              bank_dtype=getattr(torch, args.bank_dtype)).to(device)
    criterion = NCESoftmaxLoss() if args.softmax else NCECriterion(n_data)
    return model, contrast, criterion.to(device)


def set_optimizer(args: argparse.Namespace, model: torch.nn.Module) -> torch.optim.Optimizer:
    return util.sgd(model.parameters(), lr=args.learning_rate, momentum=args.momentum,
                    weight_decay=args.weight_decay)


def train(epoch: int, store: dataset.ImageStore, transform: dataset.PairAugment, model, contrast,
          criterion, optimizer, scaler, args: argparse.Namespace, device: torch.device) -> dict:
    """One epoch over the pool.

    Every rank draws the same seeded permutation of the pool, cuts it into global batches of
    `batch_size` x world size (the incomplete last one dropped) and trains on its contiguous chunk
    of each, so all ranks take the same number of steps and together see exactly the global batch
    a single process with the global batch size would see. `model` may be DDP-wrapped.

    Returns the epoch means, over all ranks, of both views' losses and positive probabilities (the
    model's probability that the positive is the data sample: P0 / (P0 + K/n) for NCE, softmax
    column 0 for softmax-NCE), plus images/s over all ranks. The step values stay on the device,
    summed weighted by the batch size, and are read back, averaged over the ranks, only every
    `--print_freq` steps (for the progress bar) and at the epoch's end: a step never waits for the
    device. A non-finite loss on any rank stops every rank at the first read-back after it, before
    any checkpoint of the epoch is saved.
    """
    model.train()
    order = torch.Generator().manual_seed(args.seed * 100_003 + epoch)
    world = util.world_size()
    batches = [util.rank_chunk(batch) for batch in dataset.iterate_batches(
        len(store), args.batch_size * world, shuffle=True, drop_last=True, generator=order)]
    # The epoch's anchor indices go to the device in one copy, not one per step; the store reads
    # its images by the host's copy.
    anchors = torch.stack(batches) if batches else torch.empty(0, args.batch_size, dtype=torch.long)
    if device.type == "cuda":
        anchors = anchors.pin_memory()
    anchors = anchors.to(device, non_blocking=True)
    autocast = util.autocast(device.type, args.amp, args.opt_level)
    # Running sums of the step values times the batch size, in float64 as the host summed them.
    sums = torch.zeros(len(STAT_NAMES), dtype=torch.float64, device=device)
    count, checked = 0, 0
    values = dict.fromkeys(STAT_NAMES, 0.0)
    start = time.time()
    bar = tqdm(batches, desc=f"epoch {epoch}/{args.epochs}", unit="batch", leave=False,
               disable=not util.is_main_process())
    for step, index in enumerate(bar, start=1):
        x = transform(*store.batch(index, device))
        index = anchors[step - 1]
        with autocast:
            feat_rgb, feat_depth = model(x)
        out_rgb, out_depth = contrast(feat_rgb.float(), feat_depth.float(), index)
        rgb_loss, depth_loss = criterion(out_rgb), criterion(out_depth)
        loss = rgb_loss + depth_loss
        step_stats = torch.stack((loss, rgb_loss, depth_loss, criterion.positive_probability(out_rgb).mean(),
                                  criterion.positive_probability(out_depth).mean()))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        sums += step_stats.detach().double() * index.numel()
        count += index.numel()
        if step % args.print_freq == 0 or step == len(batches):
            values = {name: total / count for name, total in zip(STAT_NAMES, util.all_reduce_mean(sums).tolist())}
            if not math.isfinite(values["loss"]):
                steps = f"step {step}" if step == checked + 1 else f"steps {checked + 1}-{step}"
                saved = (Path(args.model_folder) / "last.pth").is_file()
                raise util.UserError(f"non-finite loss ({values['loss']}) at epoch {epoch} {steps}; " + (
                    f"the last good checkpoint in {args.model_folder} is intact" if saved else
                    "no checkpoint of this run was saved yet"))
            checked = step
            bar.set_postfix(loss=f"{values['loss']:.3f}", rgb_p=f"{values['rgb_prob']:.3f}",
                            depth_p=f"{values['depth_prob']:.3f}")
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the clock stops when the device's work has finished
    stats = dict(values)
    stats["images_per_s"] = len(batches) * args.batch_size * world / max(time.time() - start, 1e-9)
    return stats


def checkpoint_state(model, contrast, optimizer, scaler, epoch: int, stats: dict, args: argparse.Namespace,
                     rng: list[dict]) -> dict:
    """Everything needed to continue, as state dicts and plain data (loads with weights_only).

    `model` is the bare module (not the DDP wrapper), so its keys carry no `module.` prefix; `rng`
    holds every rank's `util.rng_state()`, in rank order; `stats` is the epoch's log line, so that
    a resumed log can always end with the epoch it resumes from; `run` is the run's identity (its
    folder and settings), which `--resume` checks.
    """
    plain_args = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, type(None)))}
    return {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "contrast": contrast.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
            "stats": stats, "args": json.loads(json.dumps(plain_args)), "rng": rng,
            "run": {"folder": str(Path(args.model_folder).resolve()), "settings": identity(args)}}


def restore(ckpt: dict, model, contrast, optimizer, scaler, args: argparse.Namespace) -> tuple[int, dict]:
    """Continue from the checkpoint `check_resume` accepted; returns the first epoch still to train
    and the log line of the checkpoint's epoch.

    With the world size the checkpoint was written with, each rank gets its own random state back
    and training continues exactly; with another world size, each rank is reseeded from `--seed`,
    the epoch and its rank (see `process_seed`).
    """
    if ckpt["args"].get("epochs") != args.epochs:
        print(f"resume: training to epoch {args.epochs} (the run was set to {ckpt['args'].get('epochs')})")
    model.load_state_dict(ckpt["model"])
    contrast.load_state_dict(ckpt["contrast"])
    optimizer.load_state_dict(ckpt["optimizer"])
    # The loss scale continues where both scalers are at work. A disabled scaler (O1 off CUDA)
    # saves {} and loads nothing: resumed across devices, O1 starts its scale afresh on CUDA.
    if ckpt["scaler"] and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    saved_rng, world = ckpt["rng"], util.world_size()
    if len(saved_rng) == world:
        util.set_rng_state(saved_rng[util.rank()])
    else:
        util.set_seed(process_seed(args.seed, util.rank(), ckpt["epoch"] + 1))
        print(f"resume: the checkpoint holds the random states of {len(saved_rng)} processes, this run has "
              f"{world}: every process reseeded from --seed, the epoch and its rank (the run continues, "
              "but not bit for bit as it would have without the change)")
    print(f"resumed from {args.resume} (epoch {ckpt['epoch']})")
    return ckpt["epoch"] + 1, ckpt["stats"]


def load_store(pool: list[dataset.Sample], args: argparse.Namespace) -> dataset.ImageStore:
    """The decoded pool, whole on every rank (each rank's chunks come from all of it).

    With `--cache_dir` the ranks take turns so that no two write the same memory-mapped cache:
    rank 0 first, then the first rank of each other node (in case the folder is node-local), then
    the rest, which open the finished cache.
    """
    def build() -> dataset.ImageStore:
        return dataset.ImageStore(pool, args.load_size, args.cache_dir, args.num_workers,
                                  progress=util.is_main_process())

    if args.cache_dir is None:
        return build()
    turn = 0 if util.rank() == 0 else 1 if util.local_rank() == 0 else 2
    for wave in range(3):
        if wave == turn:
            store = build()
        util.barrier()
    return store


class Recorder:
    """Rank 0's outputs: TensorBoard scalars, `log.jsonl`, numbered checkpoints and `last.pth`.

    `last.pth` is rewritten with each numbered checkpoint and after any epoch that ends
    `--last_interval` seconds or more after its previous save: a checkpoint holds both encoders,
    their momentum and the banks, so saving it after every short epoch would cost more than the epoch.
    """

    def __init__(self, args: argparse.Namespace, start_epoch: int, resumed_stats: dict | None = None) -> None:
        self.folder = Path(args.model_folder)
        # A resumed run hides TensorBoard steps from its checkpoint's epoch on (logged by the crashed
        # run, or never), then writes that epoch again from the checkpoint: each epoch shows once.
        purge = start_epoch - 1 if resumed_stats is not None else start_epoch if start_epoch > 1 else None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(args.tb_folder, purge_step=purge)
        except OSError as err:
            raise util.UserError(f"{err.filename or args.model_folder}: cannot write here ({err.strerror})") from None
        for leftover in util.remove_stale_temporaries(self.folder):
            print(f"removed {leftover}, left by an interrupted save")
        self.save_freq, self.epochs, self.last_interval = args.save_freq, args.epochs, args.last_interval
        self.last_saved = time.monotonic()
        self.log_path = self.folder / "log.jsonl"
        self._log_up_to(start_epoch - 1, resumed_stats)
        if resumed_stats is not None:
            self._scalars(start_epoch - 1, resumed_stats)
        self.log = self.log_path.open("a")

    def _scalars(self, epoch: int, stats: dict) -> None:
        for name, value in stats.items():
            self.writer.add_scalar(name, value, epoch)
        self.writer.flush()

    def _log_up_to(self, last_epoch: int, last_stats: dict | None) -> None:
        """Make the log end with `last_epoch`, the checkpoint's: drop lines of later epochs (logged
        before a crash, without a checkpoint: they are trained again) and restore that epoch's own
        line from `last_stats` when a crash came between its checkpoint and its log line."""
        lines = self.log_path.read_text().splitlines(keepends=True) if self.log_path.is_file() else []
        kept = [line for line in lines if line.strip() and json.loads(line).get("epoch", 0) <= last_epoch]
        logged = {json.loads(line).get("epoch") for line in kept}
        if last_stats is not None and last_epoch not in logged:
            kept.append(json.dumps({"epoch": last_epoch, **last_stats}) + "\n")
        if kept != lines:
            util.atomic_write_text(self.log_path, "".join(kept))

    def epoch(self, epoch: int, stats: dict, state: dict) -> None:
        """Save one epoch's checkpoint `state`, then log its `stats`: a logged epoch whose
        checkpoint is missing is trained again on resume, and its line replaced."""
        numbered = epoch % self.save_freq == 0 or epoch == self.epochs
        if numbered:
            util.atomic_save(state, self.folder / f"ckpt_epoch_{epoch}.pth")
        if numbered or time.monotonic() - self.last_saved >= self.last_interval:
            util.atomic_save(state, self.folder / "last.pth")
            self.last_saved = time.monotonic()
        self._scalars(epoch, stats)
        self.log.write(json.dumps({"epoch": epoch, **stats}) + "\n")
        self.log.flush()
        print(f"epoch {epoch}: loss {stats['loss']:.4f} (rgb {stats['rgb_loss']:.4f}, depth "
              f"{stats['depth_loss']:.4f}), positive rgb {stats['rgb_prob']:.4f} depth "
              f"{stats['depth_prob']:.4f}, {stats['images_per_s']:.1f} images/s")

    def close(self) -> None:
        self.writer.close()
        self.log.close()


def main(argv: list[str] | None = None) -> Path:
    """Run pre-training (in every process under torchrun); returns the run folder with the checkpoints."""
    args = parse_option(argv)
    util.keep_freed_memory()
    device = util.init_distributed_mode(args)
    try:
        with util.stdout_on_main_process():
            folder = run(args, device)
        # Only after success: a rank that leaves while a peer still finishes the last collective
        # makes gloo abort the peer; after an error, leaving at once makes the peers fail fast.
        util.barrier()
        return folder
    finally:
        util.destroy()


def run(args: argparse.Namespace, device: torch.device) -> Path:
    """Pre-train in this process, on `device`, as one rank of the process group (if any)."""
    world = util.world_size()
    if args.sync_bn and util.is_distributed() and device.type != "cuda":
        raise util.UserError("--sync_bn needs GPUs: SyncBatchNorm has no CPU implementation")
    util.set_seed(process_seed(args.seed, util.rank()))
    print(f"git revision {util.git_revision()}")
    print("arguments: " + ", ".join(f"{k}={v}" for k, v in sorted(vars(args).items())))

    list_folder = dataset.find_list_folder(args.data_folder, args.list_folder, args.second_view)
    exclude = [s for s in args.exclude_subjects.split(",") if s]
    pool = dataset.load_pool(list_folder, Path(args.data_folder), args.prefixes, args.strict_pairs,
                             args.intensity_threshold, args.intensity_csv, exclude, args.second_view)
    global_batch = args.batch_size * world
    if len(pool) < global_batch:
        raise util.UserError(f"{list_folder}: the pool has {len(pool)} pairs, fewer than the global batch "
                             f"of {global_batch} (--batch_size {args.batch_size} x {world} processes)")
    if args.nce_k >= len(pool):
        print(f"warning: --nce_k {args.nce_k} is not smaller than the pool ({len(pool)} pairs): every anchor's "
              "negatives repeat the same pairs, several times over", file=sys.stderr)
    ckpt = check_resume(args, len(pool))
    record = claim_run_folder(args, ckpt)[0] if util.is_main_process() else None
    store = load_store(pool, args)
    transform = dataset.augment_from_args(args, train=True)

    model, contrast, criterion = set_model(args, len(pool), device)
    optimizer = set_optimizer(args, model)
    scaler = util.grad_scaler(args, device)
    start_epoch, resumed_stats = (restore(ckpt, model, contrast, optimizer, scaler, args) if ckpt is not None
                                  else (1, None))
    net = util.wrap_model(model, device)
    base_lr = args.learning_rate * (world if args.scale_lr else 1)

    recorder = Recorder(args, start_epoch, resumed_stats) if util.is_main_process() else None
    processes = f" in each of {world} processes" if world > 1 else ""
    print(f"{len(pool)} pairs, {args.model} on {device}{processes}, global batch {global_batch}, "
          f"base learning rate {base_lr:g}; checkpoints in {args.model_folder}")
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            lr = util.step_lr(epoch, base_lr, args.lr_decay_epochs, args.lr_decay_rate)
            util.set_lr(optimizer, lr)
            stats = train(epoch, store, transform, net, contrast, criterion, optimizer, scaler, args, device)
            stats["learning_rate"] = lr
            rng = util.all_gather_object(util.rng_state())
            if recorder:
                recorder.epoch(epoch, stats,
                               checkpoint_state(model, contrast, optimizer, scaler, epoch, stats, args, rng))
    finally:
        if recorder:
            recorder.close()
    if start_epoch > args.epochs:
        print(f"nothing to do: the checkpoint already reached epoch {args.epochs}")
    if record is not None:
        record.finish()
    print(f"checkpoints: {args.model_folder}")
    return Path(args.model_folder)


if __name__ == "__main__":
    util.run_cli(main)
