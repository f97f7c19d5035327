"""scripts/cluster/sweep_subjects.sh (two CPU workers, then the aggregate step), scripts/experiments/results_table.py and
scripts/experiments/compare.sh's settings (the guard of its output folder, IMAGE_SIZE)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dataset
import util
from util import REPO_ROOT


@pytest.mark.slow
def test_sweep_two_workers_then_table(synthetic_data: Path, tmp_path: Path) -> None:
    flags = ["--data_folder", str(synthetic_data), "--model_path", "none", "--save_path", str(tmp_path),
             "--epochs", "1", "--image_size", "64", "--num_workers", "0", "--batch_size", "16",
             "--freeze_encoder", "--run_name", "sweep"]
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "cluster" / "sweep_subjects.sh"), "--workers", "2", *flags],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "[worker 0]" in done.stdout and "[worker 1]" in done.stdout
    results = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert results["complete"]
    assert set(results["per_subject"]) == set(dataset.subject_names(synthetic_data / "data"))

    table = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "experiments" / "results_table.py"),
                            f"random init, frozen={tmp_path / 'sweep'}"], capture_output=True, text=True,
                           timeout=60)
    assert table.returncode == 0, table.stderr
    header, rule, row = table.stdout.strip().splitlines()
    assert header.split()[-4:] == ["acc", "UF1", "UAR", "n"]
    assert row.startswith("random init, frozen") and f"{results['uf1']:.3f}" in row


def test_results_table_pools_runs_as_mean_and_std(tmp_path: Path) -> None:
    """Several runs (one per pre-training seed) in one row: mean ± sample std of their metrics."""
    from scripts.experiments import results_table

    paths = []
    for i, (acc, uf1, uar) in enumerate([(0.5, 0.4, 0.3), (0.7, 0.6, 0.5)]):
        path = tmp_path / f"run{i}.json"
        path.write_text(json.dumps({"protocol": "loso", "acc": acc, "uf1": uf1, "uar": uar, "n_samples": 10,
                                    "seeds": {"0": {}}, "complete": True}))
        paths.append(str(path))
    [row] = results_table.table_rows(results_table.parse_row("DVSCL=" + ",".join(paths)))
    assert row == ["DVSCL", "LOSO", "0.600 ± 0.141", "0.500 ± 0.141", "0.400 ± 0.141", "10", ""]


def _stub_python(folder: Path) -> Path:
    """A Python for compare.sh that runs its inline steps (the run record) but fails every script,
    recording the last script's arguments in `folder`/args: compare.sh gets as far as its first step."""
    stub = folder / "python"
    folder.mkdir(parents=True, exist_ok=True)
    stub.write_text(f'#!/bin/sh\ncase "$1" in -|-c) exec {sys.executable} "$@";; esac\n'
                    f'echo "$@" > "{folder}/args"\nexit 1\n')
    stub.chmod(0o755)
    return stub


def _compare(out: Path, datasets: str, python: Path | None = None, **settings: str) -> subprocess.Popen:
    """compare.sh with a Python whose scripts fail at once (`_stub_python`)."""
    python = python or _stub_python(out.parent / f"stub_{out.name}")
    env = {**os.environ, "PYTHON": str(python), "DATASETS": datasets, **settings}
    return subprocess.Popen(["bash", str(REPO_ROOT / "scripts" / "experiments" / "compare.sh"), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_compare_refuses_a_folder_of_other_settings_and_not_its_own(tmp_path: Path) -> None:
    """Comparisons of the same settings started together (one seed each) all pass the guard; another
    setting is refused with one line naming the run record."""
    out = tmp_path / "out"
    python = _stub_python(tmp_path / "stub_out")  # written once: rewriting it races the runs executing it
    for _ in range(5):
        errors = [run.communicate(timeout=120)[1] for run in [_compare(out, "a=", python) for _ in range(4)]]
        assert all("step 'a_data' failed" in error for error in errors), errors
    assert util.read_record(out).settings["datasets"] == "a="
    assert not [p for p in out.iterdir() if ".tmp." in p.name]
    other = _compare(out, "b=--regime realistic")
    _, error = other.communicate(timeout=120)
    assert other.returncode == 2
    assert error == (f"error: {out}/run.json: this folder holds a run of other settings (--datasets 'a=' there, "
                     "'b=--regime realistic' here); pass another folder\n")


@pytest.mark.slow
def test_compare_renders_the_data_at_nine_eighths_of_image_size(tmp_path: Path) -> None:
    """IMAGE_SIZE sets the network's input; the data are rendered larger by the demo's 72/64, and a
    dataset's own generator flags come after, so they can override it."""
    run = _compare(tmp_path / "out", "a=--regime realistic", IMAGE_SIZE="96")
    run.communicate(timeout=120)
    assert run.returncode == 1
    assert (tmp_path / "stub_out" / "args").read_text().split()[-4:] == ["--image_size", "108", "--regime", "realistic"]
    assert util.read_record(tmp_path / "out").settings["image_size"] == 96


@pytest.mark.parametrize("variables, message", [
    ({"IMAGE_SIZE": "96px"}, "IMAGE_SIZE=96px: expected a whole number of pixels"),
    ({"SEEDS": " "}, "SEEDS is empty: expected seeds such as '0 1 2'"),
    ({"SEEDS": "0 x"}, "SEEDS: 'x' is not a seed (a whole number >= 0)"),
    ({"PROTOCOLS": "bogus"}, "PROTOCOLS: 'bogus' is not one of: probe frozen finetune"),
    ({"ENCODERS": "plain bogus"}, "ENCODERS: 'bogus' is not one of: random plain threshold"),
    ({"DATASETS": ""}, "DATASETS is empty: expected NAME=GENERATOR FLAGS;..."),
    ({"DATASETS": "a=;a=--regime realistic"}, "DATASETS: 'a' is named twice"),
    ({"PRETRAIN_EPOCHS": "0"}, "PRETRAIN_EPOCHS=0: expected a whole number > 0"),
])
def test_compare_checks_its_variables_before_it_starts_anything(tmp_path: Path, variables: dict,
                                                                message: str) -> None:
    settings = {"DATASETS": "a=", **variables}
    run = _compare(tmp_path / "out", settings.pop("DATASETS"), **settings)
    _, error = run.communicate(timeout=60)
    assert (run.returncode, error) == (2, f"error: {message}\n")
    assert not (tmp_path / "out").exists()


def test_compare_refuses_an_out_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("x")
    run = _compare(tmp_path / "out", "a=")
    _, error = run.communicate(timeout=60)
    assert (run.returncode, error) == (2, f"error: {tmp_path / 'out'}: OUT_DIR is not a folder\n")
