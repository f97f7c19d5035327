"""Motion compensation (`scripts.datatools.registration`), the synthetic generator's regimes and the
CAS(ME)^3 preparation's `--motion_compensation`."""
from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import util
from scripts.data import prepare_casme3 as cli
from scripts.datatools import fake_release as fake
from scripts.datatools.casme3 import images as ci
from scripts.datatools.registration import Motion, compensate, estimate_motion
from scripts.datatools.synthetic import generate as synthetic
from scripts.datatools.synthetic.face import make_subject
from scripts.datatools.synthetic.regime import REGIMES, make_regime

REPO = Path(__file__).resolve().parent.parent
SIZE = 64


def rigid(angle_deg: float, tx: float, ty: float) -> np.ndarray:
    """(2, 3) float32 rotation about the origin followed by a translation."""
    a = math.radians(angle_deg)
    return np.array([[math.cos(a), -math.sin(a), tx], [math.sin(a), math.cos(a), ty]], np.float32)


def moved(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """`image` as seen after the head moved by `matrix` (onset position -> apex position)."""
    return cv2.warpAffine(image, matrix, image.shape[1::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """(S, S) float32 grey albedo of a synthetic face: sharp features, a flat background."""
    maps = make_subject(0, 7, SIZE).maps
    return (255.0 * maps[:3].mean(axis=0)).astype(np.float32)


def interior(image: np.ndarray) -> np.ndarray:
    return image[4:-4, 4:-4]


@pytest.mark.parametrize("angle, tx, ty", [(0.0, 0.8, -0.5), (0.6, -1.5, 0.7), (-0.4, 0.3, 1.2)])
def test_a_rigid_head_motion_is_found_and_compensated(face: np.ndarray, angle: float, tx: float, ty: float) -> None:
    truth = rigid(angle, tx, ty)
    apex = moved(face, truth)
    motion = estimate_motion(face, apex)
    assert motion.converged
    # ECC finds the map from onset positions to where the apex frame shows them: the inverse motion
    assert np.allclose(motion.matrix, cv2.invertAffineTransform(truth), atol=0.08)
    onset_on_mid, apex_on_mid = compensate(face, apex, motion)
    before = np.abs(interior(apex - face)).mean()
    after = np.abs(interior(apex_on_mid - onset_on_mid)).mean()
    assert after < 0.5 * before


def test_half_of_a_motion_applied_twice_is_the_motion() -> None:
    motion = Motion(rigid(3.0, 2.0, -1.0), True)
    half = motion.half().matrix.astype(np.float64)
    twice = half[:, :2] @ half + np.hstack([np.zeros((2, 2)), half[:, 2:]])
    assert np.allclose(twice, motion.matrix, atol=1e-5)
    assert motion.half().angle_deg == pytest.approx(1.5, abs=1e-4)
    assert np.allclose(motion.inverse().inverse().matrix, motion.matrix, atol=1e-6)


def test_a_blank_frame_falls_back_to_no_compensation() -> None:
    blank = np.zeros((SIZE, SIZE), np.float32)
    motion = estimate_motion(blank, blank)
    assert not motion.converged and np.array_equal(motion.matrix, np.eye(2, 3, dtype=np.float32))


def test_depth_holes_are_kept_out_of_interpolation() -> None:
    rng = np.random.default_rng(0)
    depth = np.full((SIZE, SIZE), 700, np.int32) + rng.integers(-3, 4, (SIZE, SIZE), dtype=np.int32)
    depth[20:30, 10:50] = 0
    onset, apex = compensate(depth, depth, Motion(rigid(0.0, 0.7, 0.4), True), holes=True)
    assert onset.dtype == np.int32
    for frame in (onset, apex):
        measured = frame[frame != 0]
        assert measured.min() >= 697 and measured.max() <= 703  # never blended with a hole's 0
        assert (frame == 0).sum() >= (depth == 0).sum()


# ---------------------------------------------------------------------------------------------
# The generator's regimes


def difference_energy(root: Path) -> float:
    """Mean absolute encoded RGB difference (grey levels from mid-grey) over every labeled image."""
    values = []
    for path in sorted((root / synthetic.RGB_DIR).rglob("*.png")):
        diff = np.abs(np.asarray(Image.open(path), np.float32) - 128.0)
        values.append(diff.mean())
    return float(np.mean(values))


@pytest.fixture(scope="module")
def regimes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    small = dict(seed=0, n_subjects=3, samples_per_subject=6, pool_per_subject=9, pool_only_subjects=0,
                 image_size=48)
    made = {}
    for name, regime, compensated in (("default", REGIMES["default"], False),
                                      ("realistic", REGIMES["realistic"], False),
                                      ("compensated", REGIMES["realistic"], True)):
        root = tmp_path_factory.mktemp(name) / "data"
        made[name] = root, synthetic.generate_dataset(root, regime=regime, motion_compensation=compensated, **small)
    return made


def test_realistic_regime_moves_the_head_and_compensation_removes_most_of_it(
        regimes: dict[str, tuple[Path, dict]]) -> None:
    energy = {name: difference_energy(root) for name, (root, _) in regimes.items()}
    assert energy["realistic"] > 2.0 * energy["default"]
    assert energy["compensated"] < 0.75 * energy["realistic"]
    # the same pairs, labels and pool truth in all three: only the rendering differs
    truths = {name: (root / "casme3_pool" / "ground_truth.csv").read_text() for name, (root, _) in regimes.items()}
    assert truths["realistic"] == truths["compensated"]
    root, summary = regimes["realistic"]
    assert summary["arguments"]["regime"]["blink_rate"] == REGIMES["realistic"].blink_rate
    assert summary["pool"]["noise_only"] == 9  # a third of 27 pool pairs
    assert util.read_record(root).settings["motion_compensation"] is False


def test_regime_flags_override_the_preset(tmp_path: Path) -> None:
    assert make_regime("realistic", blink_rate=0.1, amplitude=None).blink_rate == 0.1
    assert make_regime("realistic", amplitude=None).amplitude == REGIMES["realistic"].amplitude
    command = [sys.executable, str(REPO / "scripts" / "data" / "make_synthetic_casme3.py"), "--out", str(tmp_path / "d"),
               "--subjects", "2", "--samples_per_subject", "2", "--pool_per_subject", "2", "--image_size", "32"]
    done = subprocess.run([*command, "--regime", "realistic", "--blink_rate", "0.2", "--motion_compensation"],
                          capture_output=True, text=True, check=True)
    assert "motion-compensated" in done.stdout and "blink_rate 0.2" in done.stdout
    record = util.read_record(tmp_path / "d")
    assert record.complete and record.settings["regime"]["head_motion_px"] == REGIMES["realistic"].head_motion_px
    assert record.details["arguments"] == record.settings


# ---------------------------------------------------------------------------------------------
# prepare_casme3.py --motion_compensation


def write_pair(folder: Path, onset: np.ndarray, apex: np.ndarray) -> ci.PairTask:
    """PNG frames (BGR, 16-bit depth) of one pair and a task that writes its differences."""
    folder.mkdir(parents=True)
    paths = {}
    depth = np.full(onset.shape, 700, np.uint16)
    for name, image in (("rgb0.png", onset), ("rgb1.png", apex), ("d0.png", depth), ("d1.png", depth)):
        paths[name] = str(folder / name)
        cv2.imwrite(paths[name], image if image.dtype == np.uint16 else np.repeat(image[..., None], 3, axis=2))
    return ci.PairTask("k", paths["rgb0.png"], paths["rgb1.png"], paths["d0.png"], paths["d1.png"],
                       str(folder / "rgb.png"), str(folder / "depth.png"), str(folder / "gray.png"),
                       ci.ImageSettings("none", 0.0, 0, 2.0, 16.0))


def test_preparation_compensates_a_moved_head(face: np.ndarray, tmp_path: Path) -> None:
    onset = np.clip(np.rint(face), 0, 255).astype(np.uint8)
    apex = np.clip(np.rint(moved(face, rigid(0.5, 1.0, -0.6))), 0, 255).astype(np.uint8)
    task = write_pair(tmp_path / "pair", onset, apex)
    plain = ci.process_pair(task)
    plain_image = np.asarray(Image.open(task.rgb_out), np.float32)
    compensated = ci.process_pair(replace(task, settings=replace(task.settings, motion_compensation=True)))
    compensated_image = np.asarray(Image.open(task.rgb_out), np.float32)
    assert compensated.status == plain.status == "written" and compensated.mad < 0.6 * plain.mad
    assert np.abs(compensated_image - 128).mean() < 0.6 * np.abs(plain_image - 128).mean()
    depth = np.asarray(Image.open(task.depth_out))
    assert (depth == 128).all()  # a flat depth frame stays flat: no edge, no hole


def test_preparation_records_motion_compensation_and_refuses_to_mix(tmp_path: Path) -> None:
    release = fake.build_fake_release(tmp_path / "raw")
    out = tmp_path / "prepared"
    argv = ["--root", str(release.root), "--annotation", str(release.annotation), "--out", str(out),
            "--gap", "6", "--stride", "3", "--box_file", str(release.boxes), "--image_size", "0",
            "--pool", "none"]
    summary = cli.main([*argv, "--motion_compensation"])
    assert summary["labeled"]["written"] > 0
    assert util.read_record(out).settings["motion_compensation"] is True
    with pytest.raises(util.UserError, match=r"other settings \(--motion_compensation True there, False here\); "
                                             r"pass another folder, or --overwrite"):
        cli.main(argv)
    assert cli.main([*argv, "--overwrite"])["labeled"]["written"] == summary["labeled"]["written"]
