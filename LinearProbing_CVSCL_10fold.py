"""k-fold linear probing of a frozen DVSCL encoder.

    for seed, fold in run.units():                     # subject-grouped folds, per seed
        model = set_model(...)                         # a fresh linear head on the frozen features
        training = set_optimizer(...)
        for epoch in 1..epochs: train(epoch, ...)      # one epoch; the optimizer step is in there
        reestimate_batch_norm(...); predict(...)       # the fold's samples
    aggregate                                          # UF1, UAR of all folds' predictions pooled

Every labeled sample once (the union of the subjects' test lists) is split into `--folds` folds,
stratified by label and grouped by subject by default (scikit-learn's StratifiedGroupKFold: no
subject in two folds), with a fixed `--split_seed`. `--split sample` gives sample-level folds as
the original code did (stratified and seeded here); they are subject-leaky: a subject's other
clips sit in the training folds, which inflates the scores. Do not compare those with LOSO.

For each fold a fresh linear head and optimizer are trained on the frozen encoder's features
(extracted once, unless `--augment`), the fold is predicted, and the head is saved under
`<run>/models/`. The head is trained as frozen LOSO trains it (`fine-tune_CVSCL.py
--freeze_encoder`: SGD, lr 0.01, momentum 0.9, weight decay 1e-4, cosine schedule over 30 epochs,
batch 32), so that the two frozen protocols measure the same thing; with a few hundred labeled
samples the head's learning rate alone can flip the sign of a comparison between encoders (CMC's
ImageNet recipe, lr 0.1 without weight decay, favoured random features over pre-trained ones on
data where frozen LOSO found the opposite: docs/evaluation-recipe.md). MAE's BatchNorm (no affine)
before the linear layer makes the probe measure what the features hold rather than their scale
(`--no_head_bn` restores the plain linear layer).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

import dataset
import util
from evaluation import engine, options
from models.LinearModel import Classifier

PROTOCOL = "kfold"
DEFAULTS = options.Defaults(epochs=30, learning_rate=0.01, batch_size=32, weight_decay=1e-4, freeze_encoder=True)


def parse_option(argv: list[str] | None = None) -> tuple[argparse.Namespace, options.EncoderSpec]:
    parser = util.ArgumentParser(
        "LinearProbing_CVSCL_10fold.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="k-fold linear probe of a frozen DVSCL encoder on every labeled sample: subject-grouped, "
                    "stratified folds; a fresh linear head per fold; pooled acc/UF1/UAR and per-fold figures "
                    "in SAVE_PATH/<run name>/results.json. Re-running skips finished folds; split folds across "
                    "processes with --shard I/N (or auto under torchrun/srun), then --aggregate_only.")
    parser.add_argument("--folds", type=int, default=10, help="number of folds")
    parser.add_argument("--split", choices=("subject", "sample"), default="subject",
                        help="subject: stratified folds with no subject in two folds; sample: sample-level "
                             "stratified folds as the original (subject-leaky, inflated scores)")
    parser.add_argument("--split_seed", type=util.SEED, default=0,
                        help="seed of the fold assignment (independent of --seed, so --seeds keeps the folds)")
    options.add_eval_args(parser, DEFAULTS)
    args = parser.parse_args(argv)
    if args.folds < 2:
        raise util.UserError(f"--folds {args.folds}: need at least 2")
    if args.lp_epochs:
        raise util.UserError(f"--lp_epochs {args.lp_epochs}: the probe trains in one phase (LP-FT is fine-tune_CVSCL.py's)")
    spec = options.resolve(args)
    return args, spec


def make_folds(labels: np.ndarray, groups: np.ndarray, folds: int, split: str, seed: int) -> list[np.ndarray]:
    """Test indices of each fold over samples with `labels` (N,) and subject `groups` (N,).

    Every sample is in exactly one fold; with split 'subject' no group spans two folds.
    """
    if split == "subject":
        n_groups = len(set(groups.tolist()))
        if n_groups < folds:
            raise util.UserError(f"--folds {folds}: only {n_groups} subjects to split by subject "
                                 f"(lower --folds)")
        splits = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(
            np.zeros(len(labels)), labels, groups)
    else:
        if len(labels) < folds:
            raise util.UserError(f"--folds {folds}: only {len(labels)} samples")
        splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(
            np.zeros(len(labels)), labels)
    return [np.sort(test) for _, test in splits]


def kfold_protocol(args: argparse.Namespace) -> engine.Protocol:
    """All labeled samples and their folds as units `fold01`, `fold02`, ..."""
    data_folder = Path(args.data_folder)
    list_folder = dataset.find_list_folder(data_folder, args.list_folder, args.second_view)
    samples = dataset.load_labeled(list_folder, data_folder, dataset.subject_names(list_folder),
                                   args.prefixes, args.strict_pairs, args.second_view)
    n_classes = engine.infer_n_classes(args, samples)
    labels = np.array([s.label for s in samples])
    groups = np.array([s.subject for s in samples])
    all_index = np.arange(len(samples))
    units = [engine.Unit(f"fold{k + 1:02d}", np.setdiff1d(all_index, test), test)
             for k, test in enumerate(make_folds(labels, groups, args.folds, args.split, args.split_seed))]
    return engine.Protocol(PROTOCOL, "LinearProbing_CVSCL_10fold.py", "folds", samples, units,
                           [u.name for u in units], n_classes, dataset.class_names(list_folder, n_classes), "head")


def probe(args: argparse.Namespace, run: engine.EvaluationRun, seed: int,
          fold: engine.Unit) -> tuple[Classifier, np.ndarray, list[dict]]:
    """Train a fresh head on the other folds and predict `fold`; returns the classifier, its
    predictions and the per-epoch history."""
    inputs, start = run.inputs(seed, fold), run.start(seed)
    model = engine.set_model(args, start, inputs, run.protocol.n_classes)
    training = engine.set_optimizer(args, model, start, inputs, run.protocol.n_classes, args.epochs)
    history = [{"epoch": epoch, **engine.train(epoch, inputs, model, training, args)}
               for epoch in range(1, args.epochs + 1)]
    engine.reestimate_batch_norm(args, model, inputs)
    return model, engine.predict(args, model, inputs), history


def main(argv: list[str] | None = None) -> dict:
    """Run (or resume) the k-fold linear probe; returns the results dict written to results.json."""
    args, spec = parse_option(argv)
    if args.aggregate_only:
        return engine.aggregate_only(args, PROTOCOL)
    with engine.EvaluationRun(args, spec, kfold_protocol(args)) as run:
        for seed, fold in run.units():
            run.save(seed, fold, *probe(args, run, seed, fold))
    return run.results


if __name__ == "__main__":
    util.run_cli(main)
