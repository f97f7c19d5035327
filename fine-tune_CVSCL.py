"""Leave-one-subject-out fine-tuning (or frozen linear evaluation) of a DVSCL encoder.

    for seed, subject in run.units():                  # every subject of subName.txt, per seed
        model = set_model(...)                         # a copy of the encoder, a fresh linear head
        for frozen, epochs in phases:                  # LP-FT: the head alone first (--lp_epochs)
            training = set_optimizer(...)
            for epoch in 1..epochs:
                train(epoch, ...)                      # one epoch; the optimizer step is in there
                validate(...)                          # with --val_subjects: held-out training subjects
        best.restore(model)                            # early stopping: the best validation epoch
        reestimate_batch_norm(...); predict(...)       # the subject's test samples
    aggregate                                          # UF1, UAR of all subjects' predictions pooled

For every subject of `subName.txt` (or of the `--subjects` subset; `--shard I/N` runs every N-th
of them, so processes or GPUs can split the work): train on `<subject>_train.txt`, test on
`<subject>_test.txt`, with a fresh encoder (the checkpoint's weights, or a seeded random init with
`--model_path none`), head and optimizer. The encoder is fine-tuned at `--learning_rate *
--encoder_lr_mult` by default; `--freeze_encoder` gives the frozen (linear) protocol. UF1 and UAR
are computed once on the predictions of all subjects pooled (MEGC convention), per-subject
accuracy beside them.

Defaults (SGD, momentum 0.9, lr 0.01 for the head and 0.001 for the encoder, cosine schedule
over 30 epochs, weight decay 1e-4, batch 32, features standardised by a BatchNorm before the
linear head, light augmentation: random resized crop of at least 80 % of the image and flips, no
colour jitter) follow common fine-tuning practice; micro-expression difference images are
low-contrast, so strong crops or colour jitter would destroy the signal.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import dataset
import util
from evaluation import engine, options, runs
from models.LinearModel import Classifier

PROTOCOL = "loso"
DEFAULTS = options.Defaults(epochs=30, learning_rate=0.01, batch_size=32, weight_decay=1e-4, freeze_encoder=False)


def parse_option(argv: list[str] | None = None) -> tuple[argparse.Namespace, options.EncoderSpec]:
    parser = util.ArgumentParser(
        "fine-tune_CVSCL.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Leave-one-subject-out fine-tuning (or, with --freeze_encoder, linear evaluation) of a "
                    "DVSCL encoder. Pooled acc/UF1/UAR over all subjects; results.json in SAVE_PATH/<run name>/. "
                    "Re-running the same command skips finished subjects; split subjects across processes "
                    "with --shard I/N or --shard auto under torchrun/srun (scripts/cluster/sweep_subjects.sh), then "
                    "--aggregate_only, which refuses while subjects are missing.")
    util.process_only(parser.add_argument("--subjects", type=str, default="",
                                          help="comma-separated subjects of subName.txt (e.g. spNO1,spNO7): a "
                                               "deliberate subset, the pooled results cover just these (pass it to "
                                               "--aggregate_only too); default all"))
    util.process_only(parser.add_argument("--save_models", action="store_true",
                                          help="save each subject's fine-tuned classifier under <run>/models/"))
    util.process_only(parser.add_argument("--list_subjects", action="store_true",
                                          help="print the subjects this command (and --shard) would run, one per "
                                               "line, and exit"))
    options.add_eval_args(parser, DEFAULTS)
    args = parser.parse_args(argv)
    spec = options.resolve(args)
    return args, spec


def loso_protocol(args: argparse.Namespace) -> engine.Protocol:
    """Subjects, their train/test lists as store indices, and every sample those lists name.

    The store holds the union of all subjects' test lists (every labeled sample, also used to
    infer the class count, so every process agrees) plus any training sample outside it. A test
    sample in its own training list, or a training sample of the test subject, is an error.
    """
    data_folder = Path(args.data_folder)
    list_folder = dataset.find_list_folder(data_folder, args.list_folder, args.second_view)
    all_subjects = dataset.subject_names(list_folder)
    chosen = select_subjects(args.subjects, all_subjects, list_folder)
    load = dict(prefixes=args.prefixes, strict_pairs=args.strict_pairs, second=args.second_view)
    samples = dataset.load_labeled(list_folder, data_folder, all_subjects, **load)
    position = {s.key: i for i, s in enumerate(samples)}
    units = []
    for subject in chosen:
        splits = {split: dataset.load_split(list_folder, data_folder, subject, split, **load)
                  for split in ("train", "test")}
        _check_no_leak(subject, splits["train"], splits["test"])
        for sample in splits["train"]:
            if sample.key not in position:
                position[sample.key] = len(samples)
                samples.append(sample)
            elif samples[position[sample.key]].label != sample.label:
                raise util.UserError(f"{sample.rgb_source}: label {sample.label} of {sample.key} disagrees with "
                                     f"{samples[position[sample.key]].rgb_source}")
        train, test = (np.array([position[s.key] for s in splits[k]]) for k in ("train", "test"))
        units.append(engine.Unit(subject, train, test))
    n_classes = engine.infer_n_classes(args, samples)
    return engine.Protocol(PROTOCOL, "fine-tune_CVSCL.py", "per_subject", samples, units, all_subjects, n_classes,
                           dataset.class_names(list_folder, n_classes), "model" if args.save_models else None)


def select_subjects(text: str, all_subjects: list[str], list_folder: Path) -> list[str]:
    """`--subjects a,b` checked against subName.txt (order of subName.txt); all when empty."""
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in all_subjects]
    if unknown:
        raise util.UserError(f"{list_folder / 'v_rgb' / 'subName.txt'}: unknown subject(s) {', '.join(unknown)}")
    return [s for s in all_subjects if s in wanted] if wanted else all_subjects


def _check_no_leak(subject: str, train: list[dataset.Sample], test: list[dataset.Sample]) -> None:
    """No test sample in training, and no training sample of the test subject."""
    test_keys = {s.key for s in test}
    leaked = [s for s in train if s.key in test_keys or s.subject == subject]
    if leaked:
        raise util.UserError(f"{leaked[0].rgb_source}: {len(leaked)} training sample(s) of the test subject "
                             f"{subject} (e.g. {leaked[0].key}); LOSO needs disjoint subjects")


def fine_tune(args: argparse.Namespace, run: engine.EvaluationRun, seed: int,
              subject: engine.Unit) -> tuple[Classifier, np.ndarray, list[dict]]:
    """Train a fresh classifier on the other subjects and predict `subject`'s test samples; returns
    the classifier, its predictions and the per-epoch history."""
    inputs, start = run.inputs(seed, subject), run.start(seed)
    model = engine.set_model(args, start, inputs, run.protocol.n_classes)
    history, best = [], engine.BestEpoch()
    for frozen, epochs in phases(args):
        model.set_frozen(frozen)
        training = engine.set_optimizer(args, model, start, inputs, run.protocol.n_classes, epochs)
        for epoch in range(1, epochs + 1):
            history.append({"epoch": len(history) + 1, **engine.train(epoch, inputs, model, training, args)})
            history[-1].update(engine.validate(args, model, inputs))
            best.offer(history[-1], model)
    kept = best.restore(model)
    if kept is not None:
        history[kept - 1]["kept"] = True
    engine.reestimate_batch_norm(args, model, inputs)
    return model, engine.predict(args, model, inputs), history


def phases(args: argparse.Namespace) -> list[tuple[bool, int]]:
    """(encoder frozen?, epochs) of each training phase. With LP-FT the head first learns on the
    pre-trained features, so that fine-tuning starts from a head that fits them instead of sending
    a random head's gradients into the encoder."""
    if args.freeze_encoder:
        return [(True, args.epochs)]
    return ([(True, args.lp_epochs)] if args.lp_epochs else []) + [(False, args.epochs)]


def main(argv: list[str] | None = None) -> dict:
    """Run (or resume) the LOSO evaluation; returns the results dict written to results.json."""
    args, spec = parse_option(argv)
    if args.list_subjects or args.aggregate_only:
        list_folder = dataset.find_list_folder(args.data_folder, args.list_folder, args.second_view)
        subjects = select_subjects(args.subjects, dataset.subject_names(list_folder), list_folder)
        if args.aggregate_only:
            return engine.aggregate_only(args, PROTOCOL, subjects)
        print("\n".join(runs.shard_of(subjects, args.shard)))
        return {}
    with engine.EvaluationRun(args, spec, loso_protocol(args)) as run:
        for seed, subject in run.units():
            run.save(seed, subject, *fine_tune(args, run, seed, subject))
    return run.results


if __name__ == "__main__":
    util.run_cli(main)
