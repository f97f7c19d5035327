"""scripts/sweep_subjects.sh (two CPU workers, then the aggregate step), scripts/results_table.py and
scripts/compare.sh's settings (the guard of its output folder, IMAGE_SIZE)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dataset
from util import REPO_ROOT


def test_sweep_two_workers_then_table(synthetic_data: Path, tmp_path: Path) -> None:
    flags = ["--data_folder", str(synthetic_data), "--model_path", "none", "--save_path", str(tmp_path),
             "--epochs", "1", "--image_size", "64", "--num_workers", "0", "--batch_size", "16",
             "--freeze_encoder", "--run_name", "sweep"]
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "sweep_subjects.sh"), "--workers", "2", *flags],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "[worker 0]" in done.stdout and "[worker 1]" in done.stdout
    results = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert results["complete"]
    assert set(results["per_subject"]) == set(dataset.subject_names(synthetic_data / "data"))

    table = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "results_table.py"),
                            f"random init, frozen={tmp_path / 'sweep'}"], capture_output=True, text=True,
                           timeout=60)
    assert table.returncode == 0, table.stderr
    header, rule, row = table.stdout.strip().splitlines()
    assert header.split()[-4:] == ["acc", "UF1", "UAR", "n"]
    assert row.startswith("random init, frozen") and f"{results['uf1']:.3f}" in row


def test_results_table_pools_runs_as_mean_and_std(tmp_path: Path) -> None:
    """Several runs (one per pre-training seed) in one row: mean ± sample std of their metrics."""
    from scripts import results_table

    paths = []
    for i, (acc, uf1, uar) in enumerate([(0.5, 0.4, 0.3), (0.7, 0.6, 0.5)]):
        path = tmp_path / f"run{i}.json"
        path.write_text(json.dumps({"protocol": "loso", "acc": acc, "uf1": uf1, "uar": uar, "n_samples": 10,
                                    "seeds": {"0": {}}, "complete": True}))
        paths.append(str(path))
    [row] = results_table.table_rows(results_table.parse_row("DVSCL=" + ",".join(paths)))
    assert row == ["DVSCL", "LOSO", "0.600 ± 0.141", "0.500 ± 0.141", "0.400 ± 0.141", "10", ""]


def _compare(out: Path, datasets: str, python: str = "/bin/false", **settings: str) -> subprocess.Popen:
    """compare.sh with a Python that fails at once: it gets as far as its first step (the data)."""
    env = {**os.environ, "PYTHON": python, "DATASETS": datasets, **settings}
    return subprocess.Popen(["bash", str(REPO_ROOT / "scripts" / "compare.sh"), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_compare_refuses_a_folder_of_other_settings_and_not_its_own(tmp_path: Path) -> None:
    """Comparisons of the same settings started together (one seed each) all pass the guard; another
    setting is refused with one line naming settings.txt."""
    for _ in range(10):
        errors = [run.communicate(timeout=60)[1] for run in [_compare(tmp_path, "a=") for _ in range(4)]]
        assert all("step 'a_data' failed" in error for error in errors), errors
    assert (tmp_path / "settings.txt").read_text().startswith("datasets: a=\n")
    assert not list(tmp_path.glob("settings.txt.*"))
    other = _compare(tmp_path, "b=--regime realistic")
    _, error = other.communicate(timeout=60)
    assert other.returncode == 2
    assert error == (f"error: {tmp_path}/settings.txt: this folder holds a comparison of other settings; "
                     "pass another OUT_DIR\n")


def test_compare_renders_the_data_at_nine_eighths_of_image_size(tmp_path: Path) -> None:
    """IMAGE_SIZE sets the network's input; the data are rendered larger by the demo's 72/64, and a
    dataset's own generator flags come after, so they can override it."""
    stub = tmp_path / "python"
    stub.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\nexit 1\n')
    stub.chmod(0o755)
    run = _compare(tmp_path / "out", "a=--regime realistic", python=str(stub), IMAGE_SIZE="96")
    run.communicate(timeout=60)
    assert run.returncode == 1
    assert (tmp_path / "args").read_text().split()[-4:] == ["--image_size", "108", "--regime", "realistic"]
    assert "image size: 96\n" in (tmp_path / "out" / "settings.txt").read_text()

    bad = _compare(tmp_path / "bad", "a=", IMAGE_SIZE="96px")
    _, error = bad.communicate(timeout=60)
    assert bad.returncode == 2
    assert error == "error: IMAGE_SIZE=96px: expected a whole number of pixels\n"
    assert not (tmp_path / "bad").exists()
