"""The evaluation scripts' command line: every flag the engine reads (`add_eval_args`, with each
script's defaults), and `resolve`, the one place where defaults that depend on the checkpoint
(architecture, input size, normalisation) are filled in."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import dataset
import util
from models import MODEL_NAMES
from models.pretrained import NORMALISATION, EncoderSpec, load_encoder_spec

from . import runs

LOSSES = ("crossentropy", "focal", "balanced", "cosine")
SCHEDULES = ("cosine", "step", "none")


@dataclass(frozen=True)
class Defaults:
    """Per-script defaults of the shared flags."""
    epochs: int
    learning_rate: float
    batch_size: int
    weight_decay: float
    freeze_encoder: bool
    optimizer: str = "sgd"
    layer: int = 5


def add_eval_args(parser: argparse.ArgumentParser, defaults: Defaults) -> None:
    """Every flag the engine reads, with the script's `defaults`; the scripts add only their own."""
    group = parser.add_argument_group("encoder")
    group.add_argument("--model_path", type=str, required=True,
                       help="pre-training checkpoint (ours or the published DVSCL/CMC format), or 'none' "
                            "for a randomly initialised encoder (the baseline). --image_size and the "
                            "normalisation flags default to the values the checkpoint was pre-trained with")
    group.add_argument("--model", type=str, default=None, choices=MODEL_NAMES,
                       help="architecture; default: the checkpoint's (alexnet with --model_path none). "
                            "Disagreeing with the checkpoint is an error")
    group.add_argument("--feat_dim", type=util.POSITIVE_INT, default=None,
                       help="embedding size; default: the checkpoint's (128 with --model_path none)")
    group.add_argument("--layer", type=int, default=defaults.layer,
                       help="encoder layer whose pooled features feed the linear head: alexnet conv1..5 = "
                            "1..5, fc6 = 6, fc7 = 7, embedding = 8; resnet stem = 1, stages 2..5, pooled = 6, "
                            "embedding = 7")
    group = parser.add_argument_group("encoder training")
    group.add_argument("--freeze_encoder", dest="freeze_encoder", action="store_const", const=True,
                       default=defaults.freeze_encoder,
                       help="train only the linear head; the encoder stays in eval mode and is checked unchanged")
    group.add_argument("--fine_tune", dest="freeze_encoder", action="store_const", const=False,
                       help="train the encoder too (at --learning_rate x --encoder_lr_mult)")
    group.add_argument("--encoder_lr_mult", type=util.NON_NEGATIVE, default=0.1,
                       help="when fine-tuning: encoder learning rate = --learning_rate x this")
    group.add_argument("--lp_epochs", type=util.NON_NEGATIVE_INT, default=0,
                       help="LP-FT: when fine-tuning, train the head alone on the frozen encoder for this many epochs "
                            "first, then everything for --epochs (0: fine-tune from the start)")
    group.add_argument("--warmup_epochs", type=util.NON_NEGATIVE_INT, default=0,
                       help="when fine-tuning: the encoder's learning rate rises linearly over this many first epochs "
                            "(0: off)")
    group.add_argument("--layer_decay", type=util.SHARE, default=1.0,
                       help="when fine-tuning: layer-wise learning-rate decay, an encoder layer k layers below --layer "
                            "trains at this**k of the encoder's rate (1: off)")
    group.add_argument("--l2sp", type=util.NON_NEGATIVE, default=0.0,
                       help="when fine-tuning: decay the encoder's weights towards its starting weights with this "
                            "strength (L2-SP) instead of towards zero with --weight_decay (0: off)")
    group.add_argument("--lr_by_norm", action="store_true",
                       help="when fine-tuning: scale each encoder weight's learning rate by (its norm / a fresh "
                            "init's)^2, undoing the slower effective rate of a weight that grew in pre-training and "
                            "feeds a batch norm")
    group.add_argument("--encoder_bn", choices=("train", "frozen"), default="train",
                       help="when fine-tuning: train updates the encoder's batch-norm statistics, frozen keeps the "
                            "starting encoder's")
    group.add_argument("--val_subjects", type=util.NON_NEGATIVE_INT, default=0,
                       help="early stopping: hold out this many of a unit's training subjects (never its test "
                            "subject) and keep the epoch of best validation UAR (0: off, the last epoch)")
    group = parser.add_argument_group("training (a fixed budget: no epoch or model is chosen on test data)")
    group.add_argument("--epochs", type=util.POSITIVE_INT, default=defaults.epochs, help="epochs of each unit's training")
    group.add_argument("--batch_size", "--batchsize", dest="batch_size", type=util.AT_LEAST_TWO, default=defaults.batch_size,
                       help="samples per step")
    group.add_argument("--learning_rate", type=util.POSITIVE, default=defaults.learning_rate, help="head learning rate")
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
    group.add_argument("--momentum", type=util.NON_NEGATIVE, default=0.9, help="SGD momentum")
    group.add_argument("--weight_decay", type=util.NON_NEGATIVE, default=defaults.weight_decay, help="weight decay towards zero")
    group.add_argument("--lr_schedule", choices=SCHEDULES, default="cosine",
                       help="per-epoch schedule: cosine to zero, step decays, or constant")
    group.add_argument("--lr_decay_epochs", type=str, default="",
                       help="with --lr_schedule step: epochs after which the lr is multiplied by --lr_decay_rate")
    group.add_argument("--lr_decay_rate", type=util.POSITIVE, default=0.1, help="with --lr_schedule step: the factor")
    group.add_argument("--lossfunction", choices=LOSSES, default="crossentropy",
                       help="balanced = cross-entropy weighted by inverse class frequency of the training split; "
                            "cosine = 1 - cosine of the logits and the one-hot label (the published option)")
    group.add_argument("--attention", choices=("none", "att"), default="none",
                       help="att: channel and spatial attention on each view's map before pooling and the linear "
                            "layer (the published head; ResNet conv layers 1..5 only)")
    group.add_argument("--focal_gamma", type=util.NON_NEGATIVE, default=2.0, help="gamma of --lossfunction focal")
    group.add_argument("--augment", dest="augment", action="store_const", const=True, default=None,
                       help="train on augmented images (random crop, flip, jitter) re-encoded every epoch; "
                            "default: on when the encoder is fine-tuned, off when it is frozen (then features "
                            "are extracted once)")
    group.add_argument("--no_augment", dest="augment", action="store_const", const=False,
                       help="train on the deterministic test transform")
    group.add_argument("--n_label", type=util.AT_LEAST_TWO, default=None,
                       help="number of classes; default: largest label in the lists + 1")
    group.add_argument("--seed", type=util.SEED, default=0, help="seed of head init, batch order, augmentation "
                       "(and of the encoder with --model_path none)")
    util.process_only(group.add_argument("--seeds", type=util.POSITIVE_INT, default=1,
                                         help="repeat the whole protocol with seeds SEED..SEED+N-1; results give mean"
                                              " and std"))
    util.process_only(group.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N"))
    util.add_amp_args(group)
    group = parser.add_argument_group("output")
    util.process_only(group.add_argument("--save_path", type=str, default="runs/eval",
                                         help="run folders (unit results, predictions.csv, results.json, log) go here"))
    util.process_only(group.add_argument("--tb_path", type=str, default=None,
                                         help="TensorBoard files go to TB_PATH/<run name>_<8 hex digits naming "
                                              "the run folder>; default SAVE_PATH/<run name>/tb"))
    util.process_only(group.add_argument("--run_name", type=str, default=None,
                                         help="run folder name; default derived from the settings (not from "
                                              "--subjects, so processes sharing subjects write one run)"))
    util.process_only(group.add_argument("--aggregate_only", action="store_true",
                                         help="train nothing: recompute results.json from the unit files of the run "
                                              "folder; an error naming them while units of the run are missing"))
    util.process_only(group.add_argument("--shard", type=runs.parse_shard, default="",
                                         help="I/N: run only shard I (0-based, 0 <= I < N) of the units (LOSO "
                                              "subjects after --subjects, or k-fold folds), dealt round robin in "
                                              "subName.txt / fold order, and write only their unit files (pool them "
                                              "with --aggregate_only). A unit's result does not depend on its shard. "
                                              "'auto': I/N from RANK/WORLD_SIZE (torchrun), else "
                                              "SLURM_PROCID/SLURM_NTASKS (srun), each process on cuda:<local rank> "
                                              "when CUDA is available and --device is auto or cuda; no process group "
                                              "is formed"))
    util.process_only(group.add_argument("--no_progress", action="store_true", help="no progress bars"))
    dataset.add_data_args(parser, views=("RGB_D", "RGB_gray", "RGB"), from_checkpoint=True)
    dataset.add_augment_args(parser, crop_low=0.8, jitter=0.0, grayscale_p=0.0)


def resolve(args: argparse.Namespace) -> EncoderSpec:
    """Load the encoder spec and resolve the defaults that depend on it (in place); validate.

    `--image_size` and the normalisation statistics default to the checkpoint's pre-training
    values (224 and the data layer's defaults without them).
    """
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
    for key in NORMALISATION:
        if getattr(args, key) is None:
            setattr(args, key, spec.normalisation.get(key, dataset.RGB_STATS.get(key)))
    if spec.view and args.view != "RGB" and spec.view != args.view:
        print(f"warning: {spec.source} was pre-trained with --view {spec.view}, evaluated with --view {args.view}: "
              "its second encoder meets another kind of image", file=sys.stderr)
    dataset.finish_data_args(args)
    if args.augment is None:
        args.augment = not args.freeze_encoder
    args.seed_list = [args.seed + i for i in range(args.seeds)]
    return spec
