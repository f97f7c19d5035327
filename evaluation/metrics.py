"""Metrics of pooled predictions (accuracy, UF1, UAR), their bootstrap intervals over subjects or
folds and pre-training seeds, and the pictures of both (confusion matrix, comparison forest plot).

UF1 is the macro F1 and UAR the mean per-class recall over the classes present in the ground
truth (MEGC convention), always computed on the predictions of all units pooled, never averaged
per unit. A run's figure is the mean over its evaluation seeds of each seed's pooled figure.

An interval (95 %, Hesterberg's expanded percentile bootstrap) resamples what varies between studies: the units (LOSO subjects or k-fold folds,
drawn with replacement, the same draw for every run of a resample) and, when a row holds several
runs (one per pre-training seed), the runs. A paired difference resamples both rows alike, so
what they share (subjects, folds, unit seeds, head initialisation) cancels out.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

import dataset
import util

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from .runs import RunFolder

METRICS = ("acc", "uf1", "uar")


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


def confusion_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """acc, UF1 and UAR of confusion matrices (..., K, K) (rows truth, columns prediction), each
    of shape (...): `compute_metrics`'s figures for every leading index at once."""
    confusion = np.asarray(confusion, dtype=float)
    support, predicted = confusion.sum(-1), confusion.sum(-2)
    hits = np.diagonal(confusion, axis1=-2, axis2=-1)
    present = support > 0
    n_present = present.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, hits / support, 0.0)
        f1 = np.where(present, 2 * hits / (support + predicted), 0.0)
        return {"acc": hits.sum(-1) / confusion.sum((-2, -1)),
                "uf1": f1.sum(-1) / n_present, "uar": recall.sum(-1) / n_present}


@dataclass
class RunConfusions:
    """One evaluation run as per-unit confusion matrices: `confusion` (E, U, K, K) for its E
    evaluation seeds and U units (named `units`), and the (unit, sample) pairs it predicted."""
    units: list[str]
    confusion: np.ndarray
    tested: frozenset[tuple[str, str]]

    def scores(self, unit_weights: np.ndarray) -> dict[str, np.ndarray]:
        """Each metric (B,) for B resamples of the units, `unit_weights` (B, U) the number of times
        each unit is drawn: the pooled figure of each evaluation seed, averaged over the seeds."""
        pooled = np.einsum("bu,eukl->bekl", unit_weights, self.confusion)
        return {metric: values.mean(-1) for metric, values in confusion_scores(pooled).items()}


@dataclass
class Interval:
    """A point estimate, its 95 % bootstrap interval and the share of resamples above zero."""
    estimate: float
    low: float
    high: float
    above_zero: float


class Resamples:
    """B bootstrap draws shared by every row of one comparison: units (B, U) as multinomial counts
    and runs (B, R) as indices, for rows of U units and R runs each."""

    def __init__(self, n_units: int, n_runs: int, resamples: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.unit_weights = rng.multinomial(n_units, np.full(n_units, 1 / n_units), size=resamples).astype(float)
        self.run_draws = rng.integers(0, n_runs, size=(resamples, n_runs))
        # Hesterberg's expanded percentile interval: with few units the plain 2.5 % tails are too
        # narrow (they hold a population difference in 87 % of simulated 16-subject studies).
        self.tail = float(stats.norm.cdf(-np.sqrt(n_units / max(n_units - 1, 1))
                                         * stats.t.ppf(0.975, max(n_units - 1, 1))))

    def interval(self, runs: Sequence[RunConfusions], baseline: Sequence[RunConfusions] | None = None
                 ) -> dict[str, Interval]:
        """Per metric: the mean over `runs` (minus `baseline`, paired run by run) with its interval."""
        full = np.ones((1, self.unit_weights.shape[1]))
        out = {}
        for metric in METRICS:
            point = np.array([run.scores(full)[metric][0] for run in runs])
            draws = np.stack([run.scores(self.unit_weights)[metric] for run in runs])  # (R, B)
            if baseline is not None:
                point = point - np.array([run.scores(full)[metric][0] for run in baseline])
                draws = draws - np.stack([run.scores(self.unit_weights)[metric] for run in baseline])
            resampled = np.take_along_axis(draws.T, self.run_draws, axis=1).mean(1)  # (B,)
            low, high = np.percentile(resampled, [100 * self.tail, 100 * (1 - self.tail)])
            out[metric] = Interval(float(point.mean()), float(low), float(high), float((resampled > 0).mean()))
        return out


# ---------------------------------------------------------------------------------------------
# A run's pooled results


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


def aggregate(folder: RunFolder, record: util.RunRecord, units: Sequence[str] | None = None,
              writer: SummaryWriter | None = None) -> dict:
    """Pooled metrics of `units` (default: all of the run's) for every seed of the run; writes
    predictions.csv, results.json and confusion.png, and marks the record complete when every
    unit of the run is in.

    A missing unit file is a `UserError` naming the units (nothing is written); a deliberate
    subset passes its `units` and is marked incomplete in results.json.

    acc/UF1/UAR are computed per seed on the predictions of all its units pooled, then averaged
    over seeds (std beside). Per-unit figures and the confusion matrix pool every seed's
    predictions; `n` counts distinct samples. A sample tested twice within one seed is an error.
    """
    info = {**record.details, "protocol": record.settings["protocol"]}
    n_classes, kind, seeds = info["n_classes"], info["unit_kind"], info["seeds"]
    units = info["units"] if units is None else list(units)
    wanted = {(seed, unit) for seed in seeds for unit in units}
    records = [r for r in folder.load_units() if (r["seed"], r["unit"]) in wanted]
    done = {(r["seed"], r["unit"]) for r in records}
    absent = [unit if len(seeds) == 1 else f"seed{seed}/{unit}" for seed in seeds for unit in units
              if (seed, unit) not in done]
    if absent:
        what = "subject(s)" if kind == "per_subject" else "fold(s)"
        raise util.UserError(f"{folder.root}: {len(absent)} of {len(wanted)} {what} not finished "
                             f"({', '.join(absent)}); run their shards again (finished units are skipped) "
                             "before aggregating")
    rows: list[Prediction] = []
    seen: dict[tuple[int, str], str] = {}
    for unit in records:
        for key, subject, label, prediction, dbtype in zip(unit["keys"], unit["subjects"], unit["labels"],
                                                           unit["predictions"], unit["dbtypes"]):
            if (unit["seed"], key) in seen:
                raise util.UserError(f"{folder.unit_path(unit['seed'], unit['unit'])}: sample {key} is also "
                                     f"tested in unit {seen[unit['seed'], key]}")
            seen[unit["seed"], key] = unit["unit"]
            rows.append(Prediction(unit["seed"], unit["unit"], subject, key, label, prediction, dbtype))
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
    results["diagnostics"] = training_diagnostics(records)
    results.update({"n_samples": len({r.sample for r in rows}), "seeds": per_seed, kind: units,
                    "class_names": info["class_names"], "classes_present": pooled["classes_present"],
                    "confusion": pooled["confusion"], "complete": not missing, "missing": missing,
                    "args": info["args"], "git_revision": util.git_revision()})
    _write_predictions(folder.root / "predictions.csv", rows)
    util.atomic_write_json(folder.root / "results.json", results)
    title = f"{info['protocol']}: acc {results['acc']:.3f} UF1 {results['uf1']:.3f} UAR {results['uar']:.3f}"
    plot_confusion(np.array(pooled["confusion"]), info["class_names"], folder.root / "confusion.png", title)
    if results["complete"]:
        record.finish()
    if writer is not None:
        for metric in ("acc", "uf1", "uar"):
            writer.add_scalar(f"pooled/{metric}", results[metric], len(done))
    return results


def training_diagnostics(records: Sequence[dict]) -> dict:
    """Means over the units of the final training loss and, for fine-tuned encoders, of the
    encoder's relative weight change ||w - w0|| / ||w0||: a fine-tuning that under-trains shows a
    high loss, one that forgets what pre-training learned a large change."""
    out = {"final_train_loss": float(np.mean([r["history"][-1]["loss"] for r in records]))}
    changes = [r["encoder_change"]["all"] for r in records if "encoder_change" in r]
    if changes:
        out["encoder_change"] = float(np.mean(changes))
    return out


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
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as a PNG through a rename; a failed write is one line naming `path`."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        util.atomic_write_bytes(path, _png_bytes(fig))
    finally:
        plt.close(fig)


def _png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def plot_comparison(rows: Sequence[tuple[str, Interval, Interval | None]], baseline: str, path: Path) -> None:
    """A forest plot as a PNG: for each row (label, its UAR interval, its paired difference to
    `baseline` or None), the UAR with its 95 % interval on the left and the difference on the right."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, sharey=True, figsize=(11, 0.35 * len(rows) + 1.6),
                                      gridspec_kw={"width_ratios": (1, 1)})
    y = np.arange(len(rows))[::-1]
    for panel, pick, colour in ((left, 1, "tab:blue"), (right, 2, "tab:red")):
        for yi, row in zip(y, rows):
            interval = row[pick]
            if interval is not None:
                panel.errorbar(interval.estimate, yi, xerr=[[interval.estimate - interval.low],
                                                             [interval.high - interval.estimate]],
                               fmt="o", color=colour, capsize=3)
        panel.grid(axis="x", alpha=0.3)
    right.axvline(0, color="black", lw=0.8)
    left.set_yticks(y, [row[0] for row in rows], fontsize=8)
    left.set_xlabel("UAR (95 % interval)")
    right.set_xlabel(f"UAR minus {baseline} (paired, 95 % interval)")
    save_figure(fig, path)
