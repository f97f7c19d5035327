"""scripts/sweep_subjects.sh (two CPU workers, then the aggregate step) and scripts/results_table.py."""
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
    [row] = results_table.read_rows("DVSCL=" + ",".join(paths))
    assert row == ["DVSCL", "LOSO", "0.600 ± 0.141", "0.500 ± 0.141", "0.400 ± 0.141", "10"]
