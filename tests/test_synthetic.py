"""Synthetic CAS(ME)^3-like data: determinism, layout, lists, class shares, intensity, learnability."""
from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import util
from dataset import DEFAULT_CLASS_NAMES
from scripts.datatools.synthetic import generate as synthetic
from scripts.datatools.synthetic.render import measure_intensity

REPO = Path(__file__).resolve().parent.parent
NAME = re.compile(r"^(spNO\.(\d+))-([a-m])-(\d+)-\1-\3-(\d+)_diff$")
TINY = dict(n_subjects=3, samples_per_subject=4, pool_per_subject=4, pool_only_subjects=1, image_size=48)


def read_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def key_of(path: str) -> str:
    stem = Path(path).stem
    for suffix in ("_depth", "_gray"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def luma_difference(rgb_image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From an encoded RGB difference image (gain 2): the grey value the luma of its difference
    encodes to, whether it is a rounding tie, and where the image holds the difference exactly.

    The channel differences of two 8-bit frames are integers, so 128 + 2 * d is stored without
    rounding wherever no channel saturated (0 or 255): there d, and so its luma, is recovered
    exactly. Only at a tie (128 + 2 * luma exactly half-way between two levels) can the float
    rounding of the weights put the grey image one level either side.
    """
    d = (rgb_image.astype(np.float64) - 128.0) / 2.0
    value = 128.0 + 2.0 * (0.299 * d[..., 0] + 0.587 * d[..., 1] + 0.114 * d[..., 2])
    tie = np.abs(value - np.floor(value) - 0.5) < 1e-6
    exact = ((rgb_image > 0) & (rgb_image < 255)).all(axis=-1)
    return np.clip(np.rint(value), 0, 255), tie, exact


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("syn") / "out"
    summary = synthetic.generate_dataset(root, seed=0, n_subjects=6, samples_per_subject=20,
                                         pool_per_subject=25, pool_only_subjects=1, image_size=64)
    return root, summary


def generated_bytes(root: Path, seed: int) -> dict[str, bytes]:
    synthetic.generate_dataset(root, seed=seed, **TINY)
    return tree_bytes(root)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = generated_bytes(tmp_path / "a", seed=3)
    b = generated_bytes(tmp_path / "b", seed=3)
    c = generated_bytes(tmp_path / "c", seed=4)
    assert a == b
    assert a != c
    shared = a.keys() & c.keys()
    assert "data/classes.txt" in shared and any(a[k] != c[k] for k in shared)


def test_subjects_names_and_image_files(data: tuple[Path, dict]) -> None:
    root, summary = data
    sub_names = (root / "data/v_rgb/subName.txt").read_text().splitlines()
    assert sub_names == sorted(sub_names) == sorted(summary["subjects"])
    assert all(re.fullmatch(r"spNO\d+", s) for s in sub_names)
    classes = (root / "data/classes.txt").read_text().splitlines()
    assert classes == list(DEFAULT_CLASS_NAMES[4])
    for rgb in (root / synthetic.RGB_DIR).rglob("*.png"):
        m = NAME.match(rgb.stem)
        assert m and int(m.group(4)) >= int(m.group(5)), rgb.name
        assert rgb.parent.name in classes
        depth = root / synthetic.DEPTH_DIR / rgb.parent.name / f"{rgb.stem}_depth.png"
        gray = root / synthetic.GRAY_DIR / rgb.parent.name / f"{rgb.stem}_gray.png"
        with Image.open(rgb) as im_rgb, Image.open(depth) as im_depth, Image.open(gray) as im_gray:
            assert im_rgb.mode == "RGB" and im_rgb.size == (64, 64)
            assert im_depth.mode == "L" and im_depth.size == (64, 64)
            assert im_gray.mode == "L" and im_gray.size == (64, 64)  # one 8-bit channel


def test_loso_lists(data: tuple[Path, dict]) -> None:
    root, summary = data
    sub_names = (root / "data/v_rgb/subName.txt").read_text().splitlines()
    all_keys: set[str] = set()
    tests: dict[str, set[str]] = {}
    for subject in sub_names:
        for split in ("train", "test"):
            rgb = read_lines(root / "data/v_rgb" / f"{subject}_{split}.txt")
            depth = read_lines(root / "data/v_depth" / f"{subject}_{split}.txt")
            for path, label, dbtype in rgb + depth:
                assert (root / path).is_file(), path
                assert dbtype == "0" and path.split("/")[-2] == DEFAULT_CLASS_NAMES[4][int(label)]
            assert all(p.endswith("_diff.png") for p, *_ in rgb)
            assert all(p.endswith("_diff_depth.png") for p, *_ in depth)
            rgb_labels = {key_of(p): label for p, label, _ in rgb}
            assert rgb_labels == {key_of(p): label for p, label, _ in depth}
            if len(rgb) > 1:
                assert [key_of(p) for p, *_ in rgb] != [key_of(p) for p, *_ in depth]
            gray = read_lines(root / "data/v_gray" / f"{subject}_{split}.txt")
            assert [(key_of(p), label) for p, label, _ in gray] == [(key_of(p), label) for p, label, _ in rgb]
            assert all(p.startswith(f"{synthetic.GRAY_DIR}/") and p.endswith("_diff_gray.png")
                       and (root / p).is_file() and dbtype == "0" for p, _, dbtype in gray)
            if split == "test":
                tests[subject] = set(rgb_labels)
                number = subject[len("spNO"):]
                assert all(k.startswith(f"spNO.{number}-") for k in rgb_labels)
            else:
                train = set(rgb_labels)
        assert not train & tests[subject]
        all_keys |= train | tests[subject]
    assert sum(len(t) for t in tests.values()) == len(all_keys) == summary["labeled"]["total"] == 120
    for subject in sub_names:
        train = {key_of(p) for p, *_ in read_lines(root / "data/v_rgb" / f"{subject}_train.txt")}
        assert train == all_keys - tests[subject]
    assert min(len(t) for t in tests.values()) < 20 < max(len(t) for t in tests.values())


def test_class_shares_follow_casme3(data: tuple[Path, dict]) -> None:
    root, summary = data
    labels = [int(label) for subject in summary["subjects"]
              for _, label, _ in read_lines(root / "data/v_rgb" / f"{subject}_test.txt")]
    counts = dict(zip(DEFAULT_CLASS_NAMES[4], np.bincount(labels, minlength=4).tolist()))
    assert counts == summary["labeled"]["per_class"]
    assert counts["negative"] > counts["surprise"] > counts["others"] > counts["positive"] > 0


def test_three_classes(tmp_path: Path) -> None:
    summary = synthetic.generate_dataset(tmp_path, seed=1, n_classes=3, **{**TINY, "samples_per_subject": 10})
    assert (tmp_path / "data/classes.txt").read_text().splitlines() == ["negative", "positive", "surprise"]
    assert not (tmp_path / synthetic.RGB_DIR / "others").exists()
    lines = [line for subject in summary["subjects"]
             for line in read_lines(tmp_path / "data/v_rgb" / f"{subject}_test.txt")]
    assert {int(label) for _, label, _ in lines} == {0, 1, 2}
    assert all(path.split("/")[-2] == DEFAULT_CLASS_NAMES[3][int(label)] for path, label, _ in lines)
    per_class = summary["labeled"]["per_class"]
    assert per_class["negative"] > per_class["surprise"] > per_class["positive"]


def test_pool_lists_and_measured_intensity(data: tuple[Path, dict]) -> None:
    root, summary = data
    rgb = read_lines(root / "data/v_rgb/pretrain.txt")
    depth = read_lines(root / "data/v_depth/pretrain.txt")
    assert len(rgb) == summary["pool"]["pairs"] == 7 * 25
    assert all(len(line) == 4 and line[1:3] == ["-1", "0"] for line in rgb + depth)
    assert all((root / line[0]).is_file() for line in rgb + depth)
    assert {key_of(p): i for p, _, _, i in rgb} == {key_of(p): i for p, _, _, i in depth}
    assert [key_of(p) for p, *_ in rgb] != [key_of(p) for p, *_ in depth]
    assert len({p.split("/")[2] for p, *_ in rgb}) == 7  # labeled and pool-only subjects
    gray = read_lines(root / "data/v_gray/pretrain.txt")
    assert [[key_of(p), *rest] for p, *rest in gray] == [[key_of(p), *rest] for p, *rest in rgb]
    assert all(p.startswith("casme3_pool/gray/") and (root / p).is_file() for p, *_ in gray)

    with open(root / "casme3_pool/ground_truth.csv", newline="") as f:
        truth = {row["key"]: row["has_motion"] == "1" for row in csv.DictReader(f)}
    intensity = {key_of(p): float(i) for p, _, _, i in rgb}
    assert truth.keys() == intensity.keys()
    noise = np.array([intensity[k] for k, moving in truth.items() if not moving])
    moving = np.array([intensity[k] for k, moving in truth.items() if moving])
    assert len(noise) == round(0.4 * len(truth))
    threshold = summary["pool"]["intensity_threshold"]
    assert (noise < threshold).mean() >= 0.8
    assert (moving >= threshold).mean() >= 0.7
    assert moving.min() < noise.max()  # separable for most pairs, not all: as in real data


def test_measure_intensity_is_mean_abs_difference_in_face() -> None:
    onset = np.full((4, 4, 3), 100, np.uint8)
    apex = onset.copy()
    apex[0, 0] = [110, 90, 100]
    apex[3, 3] = 0  # outside the face: ignored
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    assert measure_intensity(onset, apex, mask) == pytest.approx(20 / 12)


def test_micro_amplitude_and_zero_differences(data: tuple[Path, dict]) -> None:
    root, summary = data
    assert 0.5 < summary["max_au_displacement_px"] <= 0.05 * 64
    names = {p: NAME.match(p.stem) for p in (root / synthetic.RGB_DIR).rglob("*.png")}
    zero = [p for p, m in names.items() if m.group(4) == m.group(5)]
    assert len(zero) == summary["labeled"]["apex_equals_onset"] == 6
    assert np.all(np.asarray(Image.open(zero[0])) == 128)
    gray = root / synthetic.GRAY_DIR / zero[0].parent.name / f"{zero[0].stem}_gray.png"
    assert np.all(np.asarray(Image.open(gray)) == 128)


def test_gray_view_is_the_luma_of_the_rgb_difference(data: tuple[Path, dict]) -> None:
    """Every grey image, labeled and pool, against encode(luma(apex) - luma(onset)) recomputed from
    its RGB difference image: equal wherever that image holds the difference exactly, except at
    rounding ties, where one level either way is allowed (`luma_difference`)."""
    root, summary = data
    lists = [f"{s}_test.txt" for s in summary["subjects"]] + ["pretrain.txt"]
    pairs = [(rgb[0], gray[0]) for name in lists
             for rgb, gray in zip(read_lines(root / "data/v_rgb" / name), read_lines(root / "data/v_gray" / name))]
    assert len(pairs) == summary["labeled"]["total"] + summary["pool"]["pairs"]
    exact_pixels = all_pixels = 0
    for rgb_path, gray_path in pairs:
        assert key_of(rgb_path) == key_of(gray_path)
        with Image.open(root / gray_path) as image:
            assert image.mode == "L"
            gray = np.asarray(image)
        expected, tie, exact = luma_difference(np.asarray(Image.open(root / rgb_path)))
        assert gray.dtype == np.uint8 and gray.shape == expected.shape
        assert np.array_equal(gray[exact & ~tie], expected[exact & ~tie]), rgb_path
        assert np.abs(gray[exact].astype(int) - expected[exact]).max(initial=0) <= 1, rgb_path
        exact_pixels += int(exact.sum())
        all_pixels += exact.size
    assert exact_pixels > 0.9 * all_pixels  # the check covers most pixels, not only flat ones


def test_depth_16_bit(tmp_path: Path) -> None:
    synthetic.generate_dataset(tmp_path, seed=0, depth_bits=16, **TINY)
    path = next((tmp_path / synthetic.DEPTH_DIR).rglob("*_depth.png"))
    with Image.open(path) as im:
        assert im.mode.startswith("I;16") or im.mode == "I"
        depth = np.asarray(im).astype(np.int64)
    assert depth.dtype == np.int64 and 30000 < np.median(depth) < 35000


def test_classes_are_learnable_across_subjects(tmp_path: Path) -> None:
    """Nearest class mean on 8x8-pooled signed and absolute RGB + depth differences, leave one
    subject out: measured UAR 0.63-0.66 over seeds 0-2 (chance 0.25)."""
    summary = synthetic.generate_dataset(tmp_path, seed=0, n_subjects=8, samples_per_subject=25,
                                         pool_per_subject=0, pool_only_subjects=0, image_size=64)

    def features(path: Path) -> np.ndarray:
        diff = np.asarray(Image.open(path), np.float32).reshape(64, 64, -1) - 128.0
        pooled = [x.reshape(8, 8, 8, 8, -1).mean(axis=(1, 3)).ravel() for x in (diff, np.abs(diff))]
        return np.concatenate(pooled)

    x, y, groups = [], [], []
    for subject in summary["subjects"]:
        for path, label, _ in read_lines(tmp_path / "data/v_rgb" / f"{subject}_test.txt"):
            depth = path.replace(synthetic.RGB_DIR, synthetic.DEPTH_DIR).replace(".png", "_depth.png")
            x.append(np.concatenate([features(tmp_path / path), features(tmp_path / depth)]))
            y.append(int(label))
            groups.append(subject)
    x, y, groups = np.array(x), np.array(y), np.array(groups)
    predicted = np.empty_like(y)
    for subject in summary["subjects"]:
        test = groups == subject
        mean, std = x[~test].mean(0), x[~test].std(0) + 1e-6
        z_train, z_test = (x[~test] - mean) / std, (x[test] - mean) / std
        centroids = np.stack([z_train[y[~test] == c].mean(0) for c in range(4)])
        predicted[test] = ((z_test[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    uar = np.mean([(predicted[y == c] == c).mean() for c in range(4)])
    assert uar > 0.45, f"leave-one-subject-out UAR {uar:.3f} (chance 0.25)"


def test_the_run_record_holds_the_summary_and_regenerating_keeps_other_files(
        data: tuple[Path, dict], tmp_path: Path) -> None:
    root, summary = data
    record = util.read_record(root)
    assert (record.tool, record.complete) == ("make_synthetic_casme3.py", True)
    assert record.details == {k: v for k, v in summary.items() if k != "seconds"}
    assert {k: record.details["pool"][k] for k in ("intensity_threshold", "pairs", "kept")} == \
        {k: summary["pool"][k] for k in ("intensity_threshold", "pairs", "kept")}

    own = tmp_path / "own"
    synthetic.generate_dataset(own, seed=0, **{**TINY, "n_subjects": 5})
    (own / "keep.txt").write_text("user file")
    with pytest.raises(util.UserError) as error:
        synthetic.generate_dataset(own, seed=0, **TINY)
    assert str(error.value) == (f"{own / 'run.json'}: this folder holds a run of other settings (--n_subjects 5 there, "
                                f"3 here); pass another folder, or --overwrite to replace it")
    synthetic.generate_dataset(own, seed=0, overwrite=True, **TINY)
    assert (own / "keep.txt").read_text() == "user file"
    assert len((own / "data/v_rgb/subName.txt").read_text().splitlines()) == 3
    assert len(list((own / "data/v_rgb").glob("*_test.txt"))) == 3
    with pytest.raises(synthetic.SyntheticError, match="n_subjects"):
        synthetic.generate_dataset(tmp_path / "bad", n_subjects=1)
    assert not (tmp_path / "bad").exists()


def run_script(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/data/make_synthetic_casme3.py", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_cli_runs_from_repo_root(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["--out", str(out), "--seed", "2", "--subjects", "2", "--samples_per_subject", "3",
            "--pool_per_subject", "2", "--pool_only_subjects", "0", "--image_size", "32", "--classes", "3"]
    done = run_script(args)
    assert done.returncode == 0, done.stderr
    assert "labeled: 6 samples, 2 subjects" in done.stdout
    refused = run_script([*args[:-1], "4"])
    assert (refused.returncode, refused.stderr) == (2, f"error: {out / 'run.json'}: this folder holds a run of other "
                                                       f"settings (--n_classes 3 there, 4 here); pass another folder, "
                                                       f"or --overwrite to replace it\n")
