"""The synthetic raw release (`make_synthetic_casme3.py --raw_release`) through `scripts/data/prepare_casme3.py`,
with and without `--motion_compensation`: what it prepares, joined with `ground_truth.csv`."""
from __future__ import annotations

import csv
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset import DEFAULT_CLASS_NAMES, sample_key
from scripts.data import make_synthetic_casme3 as generator
from scripts.data import prepare_casme3 as prepare
from scripts.datatools.fake_release import ANNOTATION_NAME
from scripts.datatools.synthetic import raw_release

REPO = Path(__file__).resolve().parent.parent
SIZE = 64
GENERATOR_ARGV = ["--seed", "0", "--subjects", "3", "--samples_per_subject", "3", "--pool_per_subject", "2",
                  "--pool_only_subjects", "1", "--image_size", str(SIZE), "--regime", "realistic", "--raw_release"]


def render(out: Path) -> Path:
    """A realistic-regime raw release of 3 subjects x 3 samples under `out`."""
    assert generator.main(["--out", str(out), *GENERATOR_ARGV]) == 0
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def rgb_mean_abs_difference(path: Path) -> float:
    """Mean absolute RGB difference of an encoded difference PNG (gain 2), in 8-bit levels."""
    return float(np.abs(np.asarray(Image.open(path), np.float64) - 128.0).mean() / 2.0)


def labeled_lines(data: Path) -> dict[str, tuple[str, int]]:
    """Key -> (image path, label) of every prepared labeled sample (the union of the test lists)."""
    lines = {}
    for test_list in (data / "data" / "v_rgb").glob("*_test.txt"):
        for line in test_list.read_text().splitlines():
            path, label, _ = line.split()
            lines[sample_key(path)] = (path, int(label))
    return lines


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    root = render(tmp_path_factory.mktemp("raw") / "release")
    return root, read_csv(root / raw_release.GROUND_TRUTH_NAME)


@pytest.fixture(scope="module")
def prepared(release: tuple[Path, list[dict[str, str]]], tmp_path_factory: pytest.TempPathFactory
             ) -> dict[bool, Path]:
    """The release prepared without (False) and with (True) --motion_compensation."""
    root, _ = release
    outputs = {}
    for compensated in (False, True):
        out = tmp_path_factory.mktemp("prepared") / "casme3"
        prepare.main(["--root", str(root / raw_release.PART_A), "--part_b_root", str(root / raw_release.PART_B),
                      "--annotation", str(root / ANNOTATION_NAME), "--out", str(out), "--classes", "4",
                      "--image_size", str(SIZE), "--workers", "1", *(["--motion_compensation"] * compensated)])
        outputs[compensated] = out
    return outputs


def test_every_rendered_sample_is_prepared_with_its_class(release: tuple[Path, list[dict[str, str]]],
                                                         prepared: dict[bool, Path]) -> None:
    _, truth = release
    rendered = {row["key"]: row for row in truth if row["split"] == "labeled" and row["apex_equals_onset"] == "0"}
    assert len(rendered) == 9
    for out in prepared.values():
        lines = labeled_lines(out)
        assert lines.keys() == rendered.keys()
        for key, (path, label) in lines.items():
            assert label == int(rendered[key]["label"])
            assert path.split("/")[-2] == rendered[key]["class"] == DEFAULT_CLASS_NAMES[4][label]


def test_pool_is_every_rendered_pool_pair(release: tuple[Path, list[dict[str, str]]],
                                          prepared: dict[bool, Path]) -> None:
    _, truth = release
    rendered = {row["key"]: row["part"] for row in truth if row["split"] == "pool"}
    assert sorted(rendered.values()) == ["partA"] * 6 + ["partB"] * 2
    for out in prepared.values():
        assert {row["key"] for row in read_csv(out / "intensity_pool.csv")} == rendered.keys()
        pool_list = (out / "data" / "v_rgb" / "pretrain.txt").read_text().splitlines()
        assert len(pool_list) == len(rendered)


def test_motion_compensation_removes_the_head_motion(release: tuple[Path, list[dict[str, str]]],
                                                     prepared: dict[bool, Path]) -> None:
    """Without registration the RGB difference grows with the head motion of ground_truth.csv; with
    it, the samples of above-median head motion keep less than half of their difference."""
    _, truth = release
    motion = {row["key"]: float(row["head_motion_px"]) for row in truth if row["split"] == "labeled"}
    keys = sorted(labeled_lines(prepared[False]), key=motion.get)
    energy = {compensated: np.array([rgb_mean_abs_difference(out / labeled_lines(out)[key][0]) for key in keys])
              for compensated, out in prepared.items()}
    head = np.array([motion[key] for key in keys])
    rank_correlation = np.corrcoef(np.argsort(np.argsort(energy[False])), np.arange(len(keys)))[0, 1]
    assert rank_correlation > 0.8
    large = head >= np.median(head)
    assert head[large].min() > 0.3
    assert energy[True][large].mean() < 0.5 * energy[False][large].mean()


def test_same_seed_same_bytes(release: tuple[Path, list[dict[str, str]]], tmp_path: Path) -> None:
    root, _ = release
    again = render(tmp_path / "again")
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((root / name).read_bytes() == (again / name).read_bytes() for name in files)
    with zipfile.ZipFile(root / ANNOTATION_NAME) as workbook:
        assert {info.date_time for info in workbook.infolist()} == {raw_release.FIXED_ZIP_TIME}


def test_motion_compensation_is_refused_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "scripts/data/make_synthetic_casme3.py", "--out", str(tmp_path / "raw"),
                           "--raw_release", "--motion_compensation"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error: --motion_compensation") and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "raw").exists()
