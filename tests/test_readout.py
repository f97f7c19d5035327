"""scripts/experiments/readout.py: LOSO linear read-outs of frozen features (known answers), their paired
intervals, and the command end to end on a tiny realistic raw release (as tests/test_raw_release.py
renders and prepares one)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import util
from helpers import fails
from evaluation.metrics import Resamples
from models import build_model
from scripts.data import make_synthetic_casme3 as generator
from scripts.data import prepare_casme3 as prepare
from scripts.experiments import readout
from scripts.datatools.fake_release import ANNOTATION_NAME
from scripts.datatools.synthetic import raw_release

SIZE = 64
# seed 1 gives 4 subjects of 4 to 6 prepared samples, with blinks and all four action classes
GENERATOR_ARGV = ["--seed", "1", "--subjects", "4", "--samples_per_subject", "5", "--pool_per_subject", "1",
                  "--pool_only_subjects", "0", "--image_size", str(SIZE), "--regime", "realistic", "--raw_release"]
HEAD, BLINK, ACTION = readout.TARGETS


# ---------------------------------------------------------------------------------------------
# The read-out itself, on features whose answer is known


def grouped(n_subjects: int, per_subject: int) -> np.ndarray:
    return np.repeat(np.arange(n_subjects), per_subject)


def test_features_holding_a_continuous_target_give_r2_near_one_and_noise_none() -> None:
    rng = np.random.default_rng(0)
    subjects = grouped(8, 15)
    y = rng.normal(2.0, 0.5, len(subjects))
    noise = rng.normal(size=(len(subjects), 6))
    exact = readout.fit_readout(np.column_stack([y, noise]), y, subjects, 8, HEAD)
    resamples = Resamples(8, 1, 500, seed=0)
    found = readout.interval(exact, resamples)
    assert 0.95 < found.estimate <= 1 and found.low > 0.9
    blind = readout.interval(readout.fit_readout(noise, y, subjects, 8, HEAD), resamples)
    assert -0.3 < blind.estimate <= 0.02
    better = readout.interval(exact, resamples, baseline=readout.fit_readout(noise, y, subjects, 8, HEAD))
    assert better.estimate == pytest.approx(found.estimate - blind.estimate)
    assert better.low > 0.8 and better.above_zero == 1.0


def test_r2_pools_the_subjects_predictions() -> None:
    """R^2 of the pooled out-of-subject predictions: 1 - SS_res / SS_tot about the pooled mean,
    and a subject drawn twice counts twice."""
    y, predicted = np.array([1.0, 2.0, 3.0, 5.0]), np.array([1.5, 2.0, 2.0, 4.0])
    regression = readout.RegressionReadout(y, predicted, np.array([0, 0, 1, 1]), 2)
    expected = 1 - np.sum((y - predicted) ** 2) / np.sum((y - y.mean()) ** 2)
    twice = np.r_[y, y[2:]], np.r_[predicted, predicted[2:]]
    expected_twice = 1 - np.sum((twice[0] - twice[1]) ** 2) / np.sum((twice[0] - twice[0].mean()) ** 2)
    assert regression.score(np.array([[1.0, 1.0], [1.0, 2.0]])) == pytest.approx([expected, expected_twice])
    one_value = readout.RegressionReadout(np.ones(2), np.zeros(2), np.array([0, 1]), 2)
    assert np.isnan(one_value.score(np.array([[2.0, 0.0]])))[0]  # undefined, left out of intervals


def test_features_holding_a_class_give_balanced_accuracy_one_and_noise_chance() -> None:
    rng = np.random.default_rng(1)
    subjects = grouped(8, 30)
    blink = (rng.random(len(subjects)) < 0.3).astype(int)  # unbalanced: balanced accuracy, not accuracy
    noise = rng.normal(size=(len(subjects), 10))
    resamples = Resamples(8, 1, 500, seed=0)
    exact = readout.interval(readout.fit_readout(np.column_stack([blink, noise]), blink, subjects, 8, BLINK),
                             resamples)
    assert exact.estimate == 1.0 and exact.low == 1.0
    blind = readout.interval(readout.fit_readout(noise, blink, subjects, 8, BLINK), resamples)
    assert abs(blind.estimate - 0.5) < 0.1 and blind.low < 0.5 < blind.high
    action = rng.integers(0, 4, len(subjects))
    onehot = np.eye(4)[action]
    four = readout.interval(readout.fit_readout(np.column_stack([onehot, noise]), action, subjects, 8, ACTION),
                            resamples)
    assert four.estimate == 1.0


def test_an_encoder_against_itself_differs_by_exactly_zero() -> None:
    rng = np.random.default_rng(2)
    subjects = grouped(5, 10)
    y = rng.normal(size=len(subjects))
    fitted = readout.fit_readout(rng.normal(size=(len(subjects), 4)) + y[:, None], y, subjects, 5, HEAD)
    same = readout.interval(fitted, Resamples(5, 1, 300, seed=3), baseline=fitted)
    assert (same.estimate, same.low, same.high, same.above_zero) == (0.0, 0.0, 0.0, 0.0)


def test_a_class_seen_in_one_subject_only_is_predicted_without_a_fit() -> None:
    """Leaving out the one subject with blinks leaves one class to train on: it is predicted."""
    subjects = grouped(3, 4)
    blink = np.r_[np.ones(4, int), np.zeros(8, int)]
    predicted = readout.loso_predictions(np.arange(12.0)[:, None], blink, subjects, False, 1.0)
    assert predicted[:4].tolist() == [0, 0, 0, 0]


# ---------------------------------------------------------------------------------------------
# The command on a prepared raw release


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(raw release, its preparation without motion compensation)."""
    root = tmp_path_factory.mktemp("raw") / "release"
    assert generator.main(["--out", str(root), *GENERATOR_ARGV]) == 0
    out = tmp_path_factory.mktemp("prepared") / "casme3"
    prepare.main(["--root", str(root / raw_release.PART_A), "--part_b_root", str(root / raw_release.PART_B),
                  "--annotation", str(root / ANNOTATION_NAME), "--out", str(out), "--classes", "4",
                  "--image_size", str(SIZE), "--workers", "1"])
    return root, out


def run(release: tuple[Path, Path], *argv: str, truth: Path | None = None) -> dict:
    root, data = release
    truth = truth or root / raw_release.GROUND_TRUTH_NAME
    return readout.main(["--data_folder", str(data), "--ground_truth", str(truth), "--resamples", "300",
                         "--num_workers", "1", "--device", "cpu", *argv])


def truth_copy(release: tuple[Path, Path], path: Path, keep, change=None) -> Path:
    """ground_truth.csv written to `path` with the rows `keep(row)` accepts, each `change(row)`d."""
    with (release[0] / raw_release.GROUND_TRUTH_NAME).open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if keep(row)]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=raw_release.GROUND_TRUTH_COLUMNS)
        writer.writeheader()
        writer.writerows(change(row) if change else row for row in rows)
    return path


def test_random_inits_read_out_end_to_end(release: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "readout.json"
    results = run(release, "--image_size", str(SIZE), "--encoder", "random init=none", "--encoder",
                  "random, seed 1=none:1", "--encoder", "itself=none", "--out", str(out))
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results["n_samples"] == 19 and len(results["subjects"]) == 4
    assert {label: info.get("seed") for label, info in results["encoders"].items()} == \
        {"random init": 0, "random, seed 1": 1, "itself": 0}
    bounds = {"head_motion_px": (-np.inf, 1.0), "blink": (0.0, 1.0), "action_class": (0.0, 1.0)}
    for column, (lowest, highest) in bounds.items():
        entry = results["targets"][column]
        assert "skipped" not in entry and set(entry["encoders"]) == {"random init", "random, seed 1", "itself"}
        for found in entry["encoders"].values():
            values = [found["estimate"], found["low"], found["high"]]
            assert np.isfinite(values).all() and lowest <= found["low"] <= found["high"] <= highest
            assert lowest <= found["estimate"] <= highest
        itself = entry["differences"]["itself - random init"]
        assert (itself["estimate"], itself["low"], itself["high"]) == (0.0, 0.0, 0.0)
        other = entry["differences"]["random, seed 1 - random init"]
        assert other["low"] <= other["high"] and 0 <= other["above_zero"] <= 1
    assert results["targets"]["action_class"]["classes"] == ["negative", "others", "positive", "surprise"]
    # another random init gives other features: the continuous read-out differs
    assert results["targets"]["head_motion_px"]["differences"]["random, seed 1 - random init"]["estimate"] != 0
    table = capsys.readouterr().out
    assert "head_motion_px  diff" in table and "itself - random init" in table and str(out) in table


def test_a_checkpoint_sets_the_random_inits_architecture_and_size(release: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    """A checkpoint holding seed 0's random alexnet (pre-trained at 64 px) reads out exactly as
    `none` drawn from --seed 0, which takes its architecture and input size (not 224)."""
    torch.manual_seed(0)
    checkpoint = tmp_path / "last.pth"
    torch.save({"model": build_model("alexnet", 128).state_dict(),
                "args": {"model": "alexnet", "feat_dim": 128, "image_size": SIZE}}, checkpoint)
    results = run(release, "--encoder", "random init=none", "--encoder", f"saved={checkpoint}")
    assert {info["image_size"] for info in results["encoders"].values()} == {SIZE}
    for entry in results["targets"].values():
        assert entry["differences"]["saved - random init"]["estimate"] == 0.0


def one_error(capsys: pytest.CaptureFixture, release: tuple[Path, Path], *argv: str, **kwargs) -> str:
    """The one error line of a read-out with `argv` (`helpers.fails`)."""
    return fails(lambda args: run(release, *args, **kwargs), list(argv), capsys)


def test_ground_truth_without_prepared_samples_is_one_error(release: tuple[Path, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    with (release[0] / raw_release.GROUND_TRUTH_NAME).open(newline="") as handle:
        dropped = [row["key"] for row in csv.DictReader(handle)
                   if row["split"] == "labeled" and row["apex_equals_onset"] == "0"][:2]
    truth = truth_copy(release, tmp_path / "truth.csv", lambda row: row["key"] not in dropped)
    line = one_error(capsys, release, "--encoder", "r=none", "--image_size", str(SIZE), truth=truth)
    assert line.startswith(f"error: {truth}: no row for 2 of the 19 prepared samples")
    assert any(f"e.g. {key}" in line for key in dropped)


def test_a_target_without_variation_is_skipped(release: tuple[Path, Path], tmp_path: Path) -> None:
    """The default regime has no blinks: blink is reported as skipped, the others are read out."""
    truth = truth_copy(release, tmp_path / "truth.csv", lambda row: True, lambda row: {**row, "blink": "0"})
    results = run(release, "--encoder", "r=none", "--encoder", "s=none:1", "--image_size", str(SIZE), truth=truth)
    assert results["targets"]["blink"]["skipped"] == "one value (0) in every prepared sample"
    assert set(results["targets"]["action_class"]["encoders"]) == {"r", "s"}


def test_bad_checkpoint_too_few_subjects_and_bad_numbers_are_one_error(release: tuple[Path, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    line = one_error(capsys, release, "--encoder", "r=none", "--encoder", f"DVSCL={broken}")
    assert line.startswith(f"error: --encoder DVSCL={broken}: {broken}: not a loadable checkpoint")

    _, data = release
    lists = tmp_path / "lists"
    shutil.copytree(data / "data", lists)
    subject_list = lists / "v_rgb" / "subName.txt"
    subject_list.write_text("\n".join(subject_list.read_text().split()[:2]) + "\n")
    line = one_error(capsys, release, "--encoder", "r=none", "--list_folder", str(lists))
    assert line == f"error: {subject_list}: 2 subject(s) with labeled samples; read-outs need at least 3"

    for flag, value in (("--resamples", "0"), ("--seed", "-1"), ("--layer", "0"), ("--strength", "0")):
        assert f"argument {flag}: {value}: must be" in one_error(capsys, release, "--encoder", "r=none", flag, value)
    assert "'x': expected a seed" in one_error(capsys, release, "--encoder", "r=none:x")
