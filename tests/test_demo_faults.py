"""The demo killed and run again: `bash scripts/experiments/demo.sh` at a reduced scale is SIGKILLed (its whole
process group) at seeded random points, re-run after each kill, and at the end its
results_table.txt and every predictions.csv equal those of an uninterrupted run. An interrupted
step must be resumed or redone, never taken as finished."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from util import REPO_ROOT

KILLS = 10
# A demo of seconds instead of minutes: 10 subjects of 3 samples, a pool of 120 pairs, 2 epochs everywhere.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "IMAGE_SIZE": "64", "PRETRAIN_EPOCHS": "2",
       "EVAL_FLAGS": "--epochs 2", "DATASETS": "default=--subjects 10 --samples_per_subject 3 --pool_per_subject 10 "
                                               "--pool_only_subjects 2"}


def demo(out: Path) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(REPO_ROOT / "scripts" / "experiments" / "demo.sh"), str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def outputs(out: Path) -> dict[str, str]:
    """The table and every evaluation's predictions, by path relative to `out`."""
    files = [out / "results_table.txt", *sorted(out.glob("*/eval/*/predictions.csv"))]
    return {str(path.relative_to(out)): path.read_text() for path in files}


@pytest.mark.slow
def test_a_demo_killed_ten_times_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    start = time.monotonic()
    reference = demo(tmp_path / "reference")
    assert reference.wait(timeout=1200) == 0, reference.stderr.read()
    duration = time.monotonic() - start
    expected = outputs(tmp_path / "reference")
    assert len(expected) == 10  # the table, 3 encoders x 3 protocols

    rng = random.Random(22)
    out = tmp_path / "killed"
    for _ in range(KILLS):
        process = demo(out)
        time.sleep(rng.uniform(0.02, 0.9) * duration)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    final = demo(out)
    assert final.wait(timeout=1200) == 0, final.stderr.read()
    assert outputs(out) == expected
