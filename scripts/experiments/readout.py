"""What an encoder's frozen features know: leave-one-subject-out linear read-outs of the nuisances
and of the facial action, with bootstrap intervals over subjects, and paired differences between
encoders.

Why: a two-view contrastive objective rewards whatever both views of a pair share. Head motion
between onset and apex lights up every edge of the face in the RGB difference and in the depth
difference alike, so pre-training can learn to encode the head's movement (and blinks) instead of
the facial action, and still solve its task. The labeled evaluations only say how well the action
is recognised; this script measures, on a synthetic raw release whose ground truth is known, how
much of each is linearly decodable from the features:

    head_motion_px   mean displacement of the face's pixels by the head motion (continuous: R^2)
    blink            a blink between onset and apex (binary: balanced accuracy, chance 0.5)
    action_class     the class whose AU pattern the sample carries (4 classes: UAR, chance 0.25)

For every encoder (`--encoder LABEL=CHECKPOINT`, a pre-training `last.pth`, or `none` for a random
init drawn from `--seed` as the evaluations draw it; `none:S` draws it from seed S), the features
of every labeled sample (the union of the subjects' test lists) at `--layer` are extracted once,
with the deterministic test transform, exactly as the frozen evaluations extract them
(`evaluation.engine.extract_features`). For each subject, a standardiser and a linear model with a
fixed penalty (ridge regression for the continuous target, class-balanced logistic regression for
the others; never tuned) are fitted on the other subjects' samples and predict that subject's; the
metric is computed once on the pooled out-of-subject predictions. Its 95 % interval resamples
subjects with replacement (`evaluation.metrics.Resamples`: the same draws for every encoder, and
its expanded percentile tails) and recomputes the metric on the resampled subjects' pooled
predictions (the models are not refitted). Each encoder after the first gets its paired difference
to the first, over the same subject draws, with the share of resamples above zero.

A pre-trained encoder whose features predict head motion better than a random init's while
predicting the action no better has learnt the nuisance. Usage, on a realistic-regime release
(pass --motion_compensation to the preparation to register the apex to the onset first)::

    python scripts/data/make_synthetic_casme3.py --out RAW --seed 0 --regime realistic --raw_release \\
        --subjects 10 --samples_per_subject 10 --image_size 108
    python scripts/data/prepare_casme3.py --root RAW/partA --part_b_root RAW/partB \\
        --annotation "RAW/cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx" --out DATA --classes 4 \\
        --image_size 108 --workers 2 [--motion_compensation]
    python scripts/experiments/readout.py --data_folder DATA --ground_truth RAW/ground_truth.csv \\
        --encoder "random init=none" --encoder "DVSCL=CKPT" [--out readout.json]

`--image_size` defaults to the checkpoint's (as the evaluations resolve it); a `none` encoder takes
the architecture, embedding size and input size of the first checkpoint encoder, so that both sides
of a difference see the same input (alexnet at the evaluations' default without a checkpoint).
"""
from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import dataset  # noqa: E402
import util  # noqa: E402
from evaluation import engine, options, runs  # noqa: E402
from evaluation.metrics import Interval, Resamples, RunConfusions  # noqa: E402
from models.pretrained import EncoderSpec  # noqa: E402

MIN_SUBJECTS = 3
BATCH_SIZE = 64  # feature extraction only: the batch size changes no feature


@dataclass(frozen=True)
class Target:
    """A ground_truth.csv column read out of the features: `continuous` (R^2) or classes (UAR,
    balanced accuracy for two)."""
    column: str
    continuous: bool
    metric: str


TARGETS = (Target("head_motion_px", True, "R^2"), Target("blink", False, "balanced acc"),
           Target("action_class", False, "UAR"))


# ---------------------------------------------------------------------------------------------
# Read-outs and their intervals


class RegressionReadout:
    """Out-of-subject predictions of a continuous target as per-subject sums (U, 4): n, sum y,
    sum y^2 and the squared residuals; R^2 of any weighting of the subjects follows from them."""

    def __init__(self, values: np.ndarray, predictions: np.ndarray, subject_index: np.ndarray, n_units: int) -> None:
        columns = np.stack([np.ones_like(values), values, values ** 2, (values - predictions) ** 2], axis=1)
        self.sums = np.zeros((n_units, 4))
        np.add.at(self.sums, subject_index, columns)

    def score(self, unit_weights: np.ndarray) -> np.ndarray:
        """R^2 (B,) of the pooled predictions, `unit_weights` (B, U) the times each subject is drawn."""
        n, total, squares, residual = (unit_weights @ self.sums).T
        spread = squares - total ** 2 / n
        with np.errstate(divide="ignore", invalid="ignore"):
            # undefined (NaN) where the drawn subjects' values do not vary (one sample drawn n times)
            return np.where(spread > 1e-9 * squares, 1 - residual / spread, np.nan)


class ClassReadout:
    """Out-of-subject predictions of a class target as per-subject confusion matrices."""

    def __init__(self, labels: np.ndarray, predictions: np.ndarray, subject_index: np.ndarray, n_units: int,
                 n_classes: int) -> None:
        confusion = np.zeros((1, n_units, n_classes, n_classes))
        np.add.at(confusion, (0, subject_index, labels, predictions), 1)
        self.confusions = RunConfusions([str(u) for u in range(n_units)], confusion, frozenset())

    def score(self, unit_weights: np.ndarray) -> np.ndarray:
        """UAR (B,) (balanced accuracy for two classes) of the pooled predictions."""
        return self.confusions.scores(unit_weights)["uar"]


Readout = RegressionReadout | ClassReadout


def loso_predictions(x: np.ndarray, values: np.ndarray, subject_index: np.ndarray, continuous: bool,
                     strength: float) -> np.ndarray:
    """Each sample's prediction (N,) by a standardiser and a linear model fitted on the other
    subjects' samples; x (N, D). The penalty is `strength` x D (ridge alpha; logistic regression
    C = 1 / (strength x D), class-balanced), the same for every subject and encoder."""
    penalty = strength * x.shape[1]
    predictions = np.zeros(len(values), dtype=float if continuous else int)
    for unit in np.unique(subject_index):
        test = subject_index == unit
        seen = np.unique(values[~test])
        if not continuous and len(seen) == 1:
            predictions[test] = seen[0]  # the other subjects show one class: nothing to separate
            continue
        model = Ridge(alpha=penalty) if continuous else LogisticRegression(
            C=1 / penalty, class_weight="balanced", max_iter=5000)
        predictions[test] = make_pipeline(StandardScaler(), model).fit(x[~test], values[~test]).predict(x[test])
    return predictions


def fit_readout(x: np.ndarray, values: np.ndarray, subject_index: np.ndarray, n_units: int, target: Target,
                strength: float = 1.0) -> Readout:
    """The LOSO read-out of `target` from features x (N, D): `values` (N,) floats, or class
    indices for a class target; `subject_index` (N,) in 0..n_units-1."""
    predictions = loso_predictions(x, values, subject_index, target.continuous, strength)
    if target.continuous:
        return RegressionReadout(values, predictions, subject_index, n_units)
    return ClassReadout(values, predictions, subject_index, n_units, int(values.max()) + 1)


def interval(readout: Readout, resamples: Resamples, baseline: Readout | None = None) -> Interval:
    """The metric of `readout` on all subjects (minus `baseline`'s: a paired difference) with its
    interval over `resamples`' subject draws and `Resamples`' expanded percentile tails. Draws in
    which the metric is undefined (an R^2 of values that do not vary) are left out."""
    full = np.ones((1, resamples.unit_weights.shape[1]))
    point, draws = readout.score(full)[0], readout.score(resamples.unit_weights)
    if baseline is not None:
        point, draws = point - baseline.score(full)[0], draws - baseline.score(resamples.unit_weights)
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return Interval(float(point), float("nan"), float("nan"), float("nan"))
    low, high = np.percentile(draws, [100 * resamples.tail, 100 * (1 - resamples.tail)])
    return Interval(float(point), float(low), float(high), float((draws > 0).mean()))


# ---------------------------------------------------------------------------------------------
# Inputs: the encoders, the prepared samples, their ground truth


@dataclass
class Encoder:
    """One `--encoder`: its label, checkpoint (or 'none'), random-init seed, and once resolved the
    evaluation flags it is extracted under and its spec."""
    label: str
    checkpoint: str
    seed: int
    args: argparse.Namespace | None = None
    spec: EncoderSpec | None = None

    @property
    def flag(self) -> str:
        return f"--encoder {self.label}={self.checkpoint}"


def parse_encoder(text: str, seed: int) -> Encoder:
    """`LABEL=CHECKPOINT`, `LABEL=none` (random init from `seed`) or `LABEL=none:S` (from seed S)."""
    label, sep, checkpoint = text.partition("=")
    if not sep or not label.strip() or not checkpoint:
        raise util.UserError(f"--encoder {text!r}: expected LABEL=CHECKPOINT (or LABEL=none for a random init)")
    if checkpoint.lower().startswith("none:"):
        try:
            seed = util.SEED(checkpoint[5:])
        except argparse.ArgumentTypeError as err:
            raise util.UserError(f"--encoder {text}: random-init seed {err}") from None
        checkpoint = "none"
    return Encoder(label.strip(), checkpoint, seed)


def resolve_encoder(encoder: Encoder, args: argparse.Namespace, like: EncoderSpec | None) -> None:
    """Resolve `encoder`'s evaluation flags as the frozen evaluations do (`options.resolve`): the
    architecture, input size and normalisation default to the checkpoint's. A random init takes the
    architecture, embedding size and input size of `like` (the first checkpoint) when given."""
    parser = argparse.ArgumentParser(add_help=False)
    options.add_eval_args(parser, options.Defaults(epochs=1, learning_rate=1.0, batch_size=BATCH_SIZE,
                                                   weight_decay=0.0, freeze_encoder=True, layer=args.layer))
    argv = ["--model_path", encoder.checkpoint, "--data_folder", args.data_folder, "--list_folder",
            str(args.list_folder), "--view", args.view, "--device", args.device, "--no_augment", "--no_progress",
            "--num_workers", str(args.num_workers)]
    image_size = args.image_size
    if encoder.checkpoint == "none" and like is not None:
        argv += ["--model", like.name, "--feat_dim", str(like.feat_dim)]
        image_size = image_size or like.image_size
    if image_size:
        argv += ["--image_size", str(image_size)]
    encoder.args = parser.parse_args(argv)
    try:
        encoder.spec = options.resolve(encoder.args)
    except util.UserError as err:
        raise util.UserError(f"{encoder.flag}: {err}") from None


def read_ground_truth(path: Path, keys: Sequence[str], data_folder: str) -> dict[str, dict[str, str]]:
    """The ground_truth.csv rows of the prepared samples `keys`, by key."""
    if not path.is_file():
        raise util.UserError(f"--ground_truth {path}: file not found")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        absent = [c for c in ("key", *(t.column for t in TARGETS)) if c not in (reader.fieldnames or [])]
        if absent:
            raise util.UserError(f"{path}: no column {', '.join(absent)} (expected the ground_truth.csv of "
                                 "make_synthetic_casme3.py --raw_release)")
        rows = {row["key"]: row for row in reader}
    missing = [key for key in keys if key not in rows]
    if missing:
        raise util.UserError(f"{path}: no row for {len(missing)} of the {len(keys)} prepared samples of "
                             f"{data_folder} (e.g. {missing[0]}); pass the ground_truth.csv of the raw release "
                             "it was prepared from")
    return {key: rows[key] for key in keys}


def target_values(target: Target, rows: Sequence[dict[str, str]], path: Path) -> tuple[np.ndarray, list[str]]:
    """(N,) floats of a continuous target, or class indices with the class names."""
    texts = [row[target.column].strip() for row in rows]
    if not target.continuous:
        names, index = np.unique(texts, return_inverse=True)
        return index, [str(n) for n in names]
    try:
        values = np.array([float(text) for text in texts])
    except ValueError:
        bad = next(row for row, text in zip(rows, texts) if not _is_number(text))
        raise util.UserError(f"{path}: {target.column} {bad[target.column]!r} of {bad['key']} is not a number") \
            from None
    if not np.isfinite(values).all():
        raise util.UserError(f"{path}: {target.column} is not finite for some prepared samples")
    return values, []


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def features(encoder: Encoder, samples: Sequence[dataset.Sample], stores: dict[int, dataset.ImageStore]
             ) -> np.ndarray:
    """(N, D) frozen features of `samples` at the encoder's `--layer`, under the test transform,
    as the frozen evaluations extract them; stores are shared by encoders of one load size."""
    args = encoder.args
    if args.load_size not in stores:
        stores[args.load_size] = dataset.ImageStore(samples, args.load_size, None, args.num_workers, progress=False)
    device = runs.eval_device(args)
    data = engine.RunData(stores[args.load_size], torch.tensor([s.label for s in samples]).to(device),
                          max(s.label for s in samples) + 1, device, dataset.augment_from_args(args, train=True),
                          dataset.augment_from_args(args, train=False))
    start = engine.StartingPoint(encoder.spec.build(encoder.seed).requires_grad_(False))
    out = engine.extract_features(args, start, data).double().cpu().numpy()
    if not np.isfinite(out).all():
        raise util.UserError(f"{encoder.flag}: its layer-{args.layer} features hold NaN or infinite values")
    return out


# ---------------------------------------------------------------------------------------------
# The command


def build_parser() -> util.ArgumentParser:
    parser = util.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_folder", required=True,
                        help="a dataset prepared by scripts/data/prepare_casme3.py from a synthetic raw release")
    parser.add_argument("--list_folder", default=None, help="its lists (default: DATA_FOLDER/data)")
    parser.add_argument("--ground_truth", required=True, type=Path,
                        help="the raw release's ground_truth.csv (its key column is the prepared sample key)")
    parser.add_argument("--encoder", action="append", required=True, metavar="LABEL=CHECKPOINT",
                        help="an encoder to read out (repeatable; differences are to the first): a pre-training "
                             "checkpoint, 'none' for a random init from --seed, or 'none:S' from seed S")
    parser.add_argument("--layer", type=util.POSITIVE_INT, default=5,
                        help="encoder layer whose pooled features are read out (as the evaluations' --layer)")
    parser.add_argument("--image_size", type=util.POSITIVE_INT, default=None,
                        help="network input size (>= 64); default: the checkpoint's")
    parser.add_argument("--view", choices=("RGB_D", "RGB_gray", "RGB"), default="RGB_D",
                        help="the views the features come from (as the evaluations' --view)")
    parser.add_argument("--strength", type=util.POSITIVE, default=1.0,
                        help="fixed penalty per feature: ridge alpha = STRENGTH x D, logistic C = 1 / (STRENGTH x D)")
    parser.add_argument("--resamples", type=util.POSITIVE_INT, default=2000,
                        help="bootstrap resamples of the subjects")
    parser.add_argument("--seed", type=util.SEED, default=0,
                        help="seed of the random inits ('none') and of the bootstrap draws")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--num_workers", type=util.POSITIVE_INT, default=2, help="threads decoding images")
    parser.add_argument("--out", type=Path, default=None, help="also write the results here as JSON")
    return parser


def load_samples(args: argparse.Namespace) -> tuple[list[dataset.Sample], list[str]]:
    """Every labeled sample of the subjects of subName.txt (their test lists) and the subjects with
    samples, at least `MIN_SUBJECTS`."""
    if not Path(args.data_folder).is_dir():
        raise util.UserError(f"--data_folder {args.data_folder}: folder not found")
    second = dataset.SECOND_VIEW_LISTS[args.view]
    args.list_folder = Path(args.list_folder or Path(args.data_folder) / dataset.LIST_FOLDER)
    list_folder = dataset.find_list_folder(args.data_folder, args.list_folder, second)
    samples = dataset.load_labeled(list_folder, Path(args.data_folder), dataset.subject_names(list_folder),
                                   second=second)
    units = sorted({s.subject for s in samples}, key=lambda name: (len(name), name))
    if len(units) < MIN_SUBJECTS:
        raise util.UserError(f"{list_folder / dataset.RGB_LISTS / dataset.SUBJECT_LIST}: {len(units)} subject(s) "
                             f"with labeled samples; read-outs need at least {MIN_SUBJECTS}")
    return samples, units


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.out is not None and not args.out.parent.is_dir():
        raise util.UserError(f"--out {args.out}: folder {args.out.parent} does not exist")
    encoders = [parse_encoder(text, args.seed) for text in args.encoder]
    labels = [e.label for e in encoders]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise util.UserError(f"--encoder: label {twice[0]!r} given twice")
    samples, units = load_samples(args)
    rows = list(read_ground_truth(args.ground_truth, [s.key for s in samples], args.data_folder).values())
    values = {t.column: target_values(t, rows, args.ground_truth) for t in TARGETS}
    subject_index = np.array([units.index(s.subject) for s in samples])
    first = None
    for encoder in sorted(encoders, key=lambda e: e.checkpoint == "none"):  # checkpoints first
        resolve_encoder(encoder, args, first)
        first = first or (encoder.spec if encoder.spec.state is not None else None)

    results = {"data_folder": str(args.data_folder), "ground_truth": str(args.ground_truth), "layer": args.layer,
               "view": args.view, "strength": args.strength, "resamples": args.resamples, "seed": args.seed,
               "n_samples": len(samples), "subjects": units, "encoders": {}}
    readouts: dict[str, dict[str, Readout]] = {t.column: {} for t in TARGETS}
    stores: dict[int, dataset.ImageStore] = {}
    for encoder in encoders:
        x = features(encoder, samples, stores)
        results["encoders"][encoder.label] = {
            "checkpoint": encoder.checkpoint, "model": encoder.spec.name, "image_size": encoder.args.image_size,
            "features": x.shape[1], **({"seed": encoder.seed} if encoder.spec.state is None else {})}
        for target in TARGETS:
            y = values[target.column][0]
            if len(np.unique(y)) > 1:
                readouts[target.column][encoder.label] = fit_readout(x, y, subject_index, len(units), target,
                                                                     args.strength)
    resamples = Resamples(len(units), 1, args.resamples, args.seed)
    results["tail"] = resamples.tail
    results["targets"] = {target.column: summarise(target, *values[target.column], readouts[target.column],
                                                   labels, resamples) for target in TARGETS}
    print(format_table(results))
    if args.out is not None:
        util.atomic_write_json(args.out, results)
        print(f"results: {args.out}")
    return results


def summarise(target: Target, y: np.ndarray, names: list[str], by_label: dict[str, Readout], labels: list[str],
              resamples: Resamples) -> dict:
    """One target's results: each encoder's metric and interval, and each later encoder's paired
    difference to the first (`labels[0]`); 'skipped' when the target does not vary."""
    entry = {"metric": target.metric, **({"classes": names} if names else {})}
    if not by_label:
        entry["skipped"] = f"one value ({y[0] if target.continuous else names[0]}) in every prepared sample"
        return entry
    entry["encoders"] = {label: vars(interval(readout, resamples)) for label, readout in by_label.items()}
    entry["differences"] = {f"{label} - {labels[0]}": vars(interval(by_label[label], resamples, by_label[labels[0]]))
                            for label in labels[1:]}
    return entry


def format_table(results: dict) -> str:
    """The results as a table: one row per target and encoder, then the paired differences."""
    lines = [f"linear read-outs of frozen layer-{results['layer']} features ({results['view']}), leave one subject "
             f"out over {len(results['subjects'])} subjects ({results['n_samples']} samples)",
             f"95 % intervals (expanded percentile, tails {100 * results['tail']:.2g} %) over {results['resamples']} "
             "resamples of the subjects; diff: paired difference to the first encoder"]
    for label, info in results["encoders"].items():
        source = f"random init (seed {info['seed']})" if "seed" in info else info["checkpoint"]
        lines.append(f"  {label}: {info['model']} {source}, {info['image_size']} px, {info['features']} features")
    rows = [("target", "metric", "encoder", "estimate", "interval", "P(>0)")]
    for column, entry in results["targets"].items():
        if "skipped" in entry:
            rows.append((column, entry["metric"], "-", "skipped:", entry["skipped"], ""))
            continue
        for label, found in entry["encoders"].items():
            rows.append((column, entry["metric"], label, f"{found['estimate']:.3f}",
                         f"[{found['low']:.3f}, {found['high']:.3f}]", ""))
        for label, found in entry["differences"].items():
            rows.append((column, "diff", label, f"{found['estimate']:+.3f}",
                         f"[{found['low']:+.3f}, {found['high']:+.3f}]", f"{found['above_zero']:.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    util.run_cli(main)
