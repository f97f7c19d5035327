"""Bootstrap intervals and paired differences (evaluation/metrics.py, scripts/experiments/results_table.py
--baseline) against cases with known answers."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluation.metrics import Resamples, RunConfusions, compute_metrics, confusion_scores
from util import REPO_ROOT

K = 4


def confusions(units: list[np.ndarray], labels: list[np.ndarray]) -> RunConfusions:
    """A one-seed run from per-unit predictions and labels (arrays of class indices)."""
    confusion = np.zeros((1, len(units), K, K))
    for u, (pred, truth) in enumerate(zip(units, labels)):
        np.add.at(confusion[0, u], (truth, pred), 1)
    names = [f"s{u:02d}" for u in range(len(units))]
    return RunConfusions(names, confusion, frozenset((n, str(i)) for n, t in zip(names, labels) for i in range(len(t))))


def test_confusion_scores_equal_sklearn_with_absent_classes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        labels = rng.choice([0, 1, 3], size=rng.integers(2, 40))  # class 2 never present
        predictions = rng.integers(0, K, size=len(labels))
        expected = compute_metrics(labels, predictions, K)
        scores = confusion_scores(np.array(expected["confusion"]))
        for metric in ("acc", "uf1", "uar"):
            assert scores[metric] == pytest.approx(expected[metric], abs=1e-12)


def _random_run(rng: np.random.Generator, n_units: int = 12) -> tuple[list[np.ndarray], list[np.ndarray]]:
    labels = [rng.integers(0, K, size=rng.integers(3, 12)) for _ in range(n_units)]
    predictions = [np.where(rng.random(len(t)) < 0.6, t, rng.integers(0, K, size=len(t))) for t in labels]
    return predictions, labels


def test_identical_runs_differ_by_zero_with_a_zero_width_interval() -> None:
    predictions, labels = _random_run(np.random.default_rng(1))
    run = confusions(predictions, labels)
    diff = Resamples(len(run.units), 1, 2000).interval([run], [run])
    for interval in diff.values():
        assert (interval.estimate, interval.low, interval.high, interval.above_zero) == (0, 0, 0, 0)


def test_flipped_predictions_give_the_exact_difference() -> None:
    rng = np.random.default_rng(2)
    predictions, labels = _random_run(rng)
    flipped = [p.copy() for p in predictions]
    changed = 0
    for pred, truth in zip(flipped, labels):  # k = 7 correct predictions made wrong
        for i in np.flatnonzero(pred == truth)[:1]:
            if changed < 7:
                pred[i], changed = (truth[i] + 1) % K, changed + 1
    assert changed == 7
    base, worse = confusions(predictions, labels), confusions(flipped, labels)
    diff = Resamples(len(base.units), 1, 500).interval([worse], [base])
    flat = np.concatenate(labels)
    before = compute_metrics(flat, np.concatenate(predictions), K)
    after = compute_metrics(flat, np.concatenate(flipped), K)
    assert diff["acc"].estimate == pytest.approx(-7 / len(flat), abs=1e-12)
    for metric in ("uf1", "uar"):
        assert diff[metric].estimate == pytest.approx(after[metric] - before[metric], abs=1e-12)
        assert diff[metric].high <= 0 and diff[metric].above_zero == 0


def _simulated_subjects(rng: np.random.Generator, n: int, gain: float) -> tuple[RunConfusions, RunConfusions]:
    """Paired predictions of a baseline and an encoder `gain` logits better, per subject of
    random difficulty and size, with imbalanced classes (as in CAS(ME)^3)."""
    labels, base, better = [], [], []
    for _ in range(n):
        truth = rng.choice(K, size=rng.integers(4, 16), p=[0.54, 0.18, 0.07, 0.21])
        ability = rng.normal(0.3, 0.8)
        shared = rng.random(len(truth))  # the same draw for both: a paired design
        wrong = (truth + rng.integers(1, K, size=len(truth))) % K
        labels.append(truth)
        base.append(np.where(shared < 1 / (1 + np.exp(-ability)), truth, wrong))
        better.append(np.where(shared < 1 / (1 + np.exp(-ability - gain)), truth, wrong))
    return confusions(better, labels), confusions(base, labels)


def test_interval_covers_the_population_difference_95_percent_of_the_time() -> None:
    """Studies of 16 subjects drawn from one population: the paired UAR interval holds the
    population's pooled UAR difference in close to 95 % of them."""
    rng = np.random.default_rng(3)
    better, base = _simulated_subjects(rng, 20000, gain=0.4)
    full = np.ones((1, len(better.units)))
    truth = better.scores(full)["uar"][0] - base.scores(full)["uar"][0]
    studies, covered = 400, 0
    for study in range(studies):
        better, base = _simulated_subjects(rng, 16, gain=0.4)
        interval = Resamples(16, 1, 1000, seed=study).interval([better], [base])["uar"]
        covered += interval.low <= truth <= interval.high
    assert 0.90 <= covered / studies <= 0.98


def _write_run(folder: Path, predictions: list[np.ndarray], labels: list[np.ndarray], protocol: str = "loso") -> None:
    """A run folder as the evaluations write it: results.json and predictions.csv."""
    folder.mkdir(parents=True)
    rows = [(0, f"s{u:02d}", f"s{u:02d}", f"s{u:02d}_{i}", int(t), int(p), 0)
            for u, (pred, truth) in enumerate(zip(predictions, labels)) for i, (t, p) in enumerate(zip(truth, pred))]
    with (folder / "predictions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seed", "unit", "subject", "sample", "label", "prediction", "dbtype"])
        writer.writerows(rows)
    metrics = compute_metrics([r[4] for r in rows], [r[5] for r in rows], K)
    (folder / "results.json").write_text(json.dumps({"protocol": protocol, **metrics, "n_samples": len(rows),
                                                     "seeds": {"0": {}}, "complete": True}))


@pytest.mark.slow
def test_results_table_prints_difference_rows_and_the_figure(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    predictions, labels = _random_run(rng)
    better = [np.where(rng.random(len(t)) < 0.5, t, p) for p, t in zip(predictions, labels)]
    for name, preds in (("random", predictions), ("dvscl", better)):
        _write_run(tmp_path / f"frozen_{name}", preds, labels)
        _write_run(tmp_path / f"probe_{name}", preds, labels, protocol="kfold")
    specs = [f"a, {enc}, {proto}={tmp_path / f'{proto}_{name}'}"
             for proto in ("frozen", "probe") for enc, name in (("random init", "random"), ("DVSCL", "dvscl"))]
    plot = tmp_path / "comparison.png"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "experiments" / "results_table.py"), "--baseline",
                           "random init", "--plot", str(plot), *specs], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[-5:] == ["n", "P(UAR", "diff", ">", "0)"]
    differences = [line for line in lines if line.startswith("  minus random init")]
    assert len(differences) == 2  # one per DVSCL row, none for the baselines
    flat = np.concatenate(labels)
    gain = compute_metrics(flat, np.concatenate(better), K)["uar"] - compute_metrics(flat, np.concatenate(predictions),
                                                                                      K)["uar"]
    assert all(f"{gain:+.3f} [" in line for line in differences)
    assert plot.stat().st_size > 10000

    unpaired = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "experiments" / "results_table.py"), "--baseline",
                               "random init", specs[0], f"a, DVSCL, frozen={tmp_path / 'probe_dvscl'}"],
                              capture_output=True, text=True, timeout=120)
    assert unpaired.returncode == 0 and "minus random init" not in unpaired.stdout  # kfold is not LOSO's pair
