"""scripts/experiments/pixel_baseline.py: LOSO logistic regression on difference-image pixels."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dataset
from scripts.experiments import pixel_baseline
from scripts.datatools.common.format import write_png
from util import REPO_ROOT, UserError


def _labeled(root: Path) -> list[dataset.Sample]:
    folder = dataset.find_list_folder(root)
    return dataset.load_labeled(folder, root, dataset.subject_names(folder))


def test_labels_written_into_the_pixels_are_found(synthetic_data: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "casme3"
    shutil.copytree(synthetic_data, root)
    rng = np.random.default_rng(0)
    samples = _labeled(root)
    for sample in samples:
        # the label sets which quarter of the image is bright; the rest is noise
        rgb = rng.integers(100, 156, size=(64, 64, 3), dtype=np.uint8)
        row, col = divmod(sample.label, 2)
        rgb[row * 32:(row + 1) * 32, col * 32:(col + 1) * 32] = 250
        write_png(sample.rgb_path, rgb)
        write_png(sample.depth_path, rng.integers(0, 65535, size=(64, 64), dtype=np.uint16))
    pixel_baseline.main(["--data_folder", str(root), "--size", "8", "--C", "0.1", "1"])
    lines = capsys.readouterr().out.splitlines()
    counts = np.bincount([s.label for s in samples]).tolist()
    assert lines[0] == f"{len(samples)} samples, 5 subjects, per class {counts}, 256 pixels each"
    assert lines[1:] == ["C 0.1: acc 1.000, UF1 1.000, UAR 1.000", "C 1: acc 1.000, UF1 1.000, UAR 1.000"]


def test_rgb_only_view_uses_three_channels(synthetic_data: Path, capsys: pytest.CaptureFixture) -> None:
    pixel_baseline.main(["--data_folder", str(synthetic_data), "--view", "RGB", "--size", "4", "--C", "1"])
    first, result = capsys.readouterr().out.splitlines()
    assert first.endswith(", 48 pixels each")
    uar = float(result.rsplit("UAR ", 1)[1])
    assert 0.0 <= uar <= 1.0


@pytest.mark.parametrize("flags, message", [
    (["--C", "0.1", "0"], "pixel_baseline.py: error: argument --C: 0: must be a number > 0 (see pixel_baseline.py "
                          "--help)"),
    (["--size", "0"], "pixel_baseline.py: error: argument --size: 0: must be a whole number > 0 (see pixel_baseline.py "
                      "--help)"),
    (["--size", "100000"], "error: --size 100000: larger than the images (64x64 px, e.g. {first}); use at most 64"),
])
def test_bad_flags_are_one_line(synthetic_data: Path, flags: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "scripts/experiments/pixel_baseline.py", "--data_folder", str(synthetic_data), *flags],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [message.format(first=_labeled(synthetic_data)[0].rgb_path)]


def test_missing_lists_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"^{tmp_path}: no v_rgb/ and v_depth/ list folders found"):
        pixel_baseline.main(["--data_folder", str(tmp_path), "--list_folder", str(tmp_path)])
