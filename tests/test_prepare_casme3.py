"""CAS(ME)^3 preparation (`scripts.datatools.casme3`, `scripts/data/prepare_casme3.py`) on the fake release of
`scripts.datatools.fake_release`."""
from __future__ import annotations

import csv
import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import dataset
import util
from scripts.data import prepare_casme3 as cli
from scripts.datatools import fake_release as fake
from scripts.datatools.casme3 import annotations
from scripts.datatools.casme3.pool import pool_pairs
from helpers import corrupt_middle, fails

REPO = Path(__file__).resolve().parent.parent
GAP, STRIDE = 6, 3
R2_KEY = "spNO.1-a-9-spNO.1-a-5_diff"  # annotation row 2: disgust, amplitude me_amplitude(0)
TEST_COUNTS = {"spNO1": 3, "spNO2": 1, "spNO3": 2, "spNO210": 2}


def prepare_argv(release: fake.FakeRelease, out: Path, *extra: str) -> list[str]:
    return ["--root", str(release.root), "--annotation", str(release.annotation), "--out", str(out),
            "--gap", str(GAP), "--stride", str(STRIDE), *extra]


def full_argv(release: fake.FakeRelease, out: Path, *extra: str) -> list[str]:
    """Box crop at the crop's own size (64 px), Part B, AU CSVs, calibrated threshold."""
    return prepare_argv(release, out, "--box_file", str(release.boxes), "--part_b_root", str(release.part_b),
                        "--au_dir", str(release.au_dir), "--image_size", "0", "--calibrate", *extra)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> fake.FakeRelease:
    return fake.build_fake_release(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def prepared(release: fake.FakeRelease, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepared") / "casme3"
    return out, cli.main(full_argv(release, out))


# ---------------------------------------------------------------------------------------------
# Units


def test_names_and_pairs() -> None:
    for spelling in ("spNO.12", "spNo.12", "spNO12", "SPNO.012", 12, 12.0, "12"):
        assert annotations.parse_subject(spelling) == 12
    assert annotations.parse_subject("sub12") is None
    assert dataset.make_key(166, "b", 834, 837) == "spNO.166-b-837-spNO.166-b-834_diff"
    assert pool_pairs(range(1, 37), 6, 3, [(5, 13), (14, 22)]) == ([(25, 31), (28, 34)], 0)
    without_31 = [(p, p + 6) for p in range(1, 29, 3) if p != 25]
    assert pool_pairs(set(range(1, 37)) - {31}, 6, 3, []) == (without_31, 1)


def test_class_maps(tmp_path: Path) -> None:
    four, three = annotations.builtin_class_map(4), annotations.builtin_class_map(3)
    assert four.classes == ("negative", "others", "positive", "surprise")
    assert {e: four.labels[e] for e in ("disgust", "fear", "anger", "sad", "others", "happy", "surprise")} == \
        {"disgust": 0, "fear": 0, "anger": 0, "sad": 0, "others": 1, "happy": 2, "surprise": 3}
    assert three.classes == ("negative", "positive", "surprise")
    assert three.labels["others"] is None and three.labels["happy"] == 1 and three.labels["surprise"] == 2
    mapping = tmp_path / "map.txt"
    mapping.write_text("# two classes\nhappy pos\nsurprise, pos\ndisgust neg\nothers -\n")
    custom = annotations.read_class_map(mapping)
    assert custom.classes == ("pos", "neg")
    assert custom.labels == {"happy": 0, "surprise": 0, "disgust": 1, "others": None}
    mapping.write_text("happy\n")
    with pytest.raises(util.UserError, match=r"map.txt:1: expected"):
        annotations.read_class_map(mapping)


# ---------------------------------------------------------------------------------------------
# The prepared fake release (4 classes, box crop at 64 px, calibrated pool of Part A and B)


def test_lists_load_with_the_dataset_and_pair(prepared: tuple[Path, dict]) -> None:
    out, report = prepared
    lists = dataset.find_list_folder(out)
    assert lists == out / "data"
    assert dataset.subject_names(lists) == list(TEST_COUNTS)
    assert dataset.class_names(lists, 4) == ["negative", "others", "positive", "surprise"]
    total = sum(TEST_COUNTS.values())
    for subject, n in TEST_COUNTS.items():
        test = dataset.load_split(lists, out, subject, "test", strict_pairs=True)
        train = dataset.load_split(lists, out, subject, "train", strict_pairs=True)
        assert len(test) == n and len(train) == total - n
        assert {s.subject for s in test} == {subject} and subject not in {s.subject for s in train}
        for sample in test + train:
            assert dataset.sample_key(sample.depth_path) == sample.key
            class_name = report["classes"][sample.label]
            assert sample.rgb_path.parent.name == sample.depth_path.parent.name == class_name
            assert sample.rgb_path.parts[-3] == "casme3_diff_imgs_all"
            assert sample.depth_path.parts[-3] == "casme3_diff_depth_all"
    for line in (lists / "v_rgb" / "spNO1_train.txt").read_text().splitlines():
        assert line.startswith("casme3_diff_me4/casme3_diff_imgs_all/") and line.endswith(" 0")
    pool = dataset.load_pool(lists, out, strict_pairs=True)
    assert len(pool) == report["pool"]["kept"]
    assert all(s.label == -1 and s.intensity is not None for s in pool)
    assert {s.subject for s in pool} == {"spNO1", "spNO2", "spNO3", "spNO210", "spNO150"}


def test_difference_images_on_known_pixels(prepared: tuple[Path, dict]) -> None:
    out, _ = prepared
    base = out / "casme3_diff_me4"
    rgb = cv2.imread(str(base / "casme3_diff_imgs_all" / "negative" / f"{R2_KEY}.png"), cv2.IMREAD_UNCHANGED)
    depth = cv2.imread(str(base / "casme3_diff_depth_all" / "negative" / f"{R2_KEY}_depth.png"),
                       cv2.IMREAD_UNCHANGED)
    box_x, box_y, box_w, box_h = fake.FACE_BOX
    assert rgb.shape == (box_h, box_w, 3) and depth.shape == (box_h, box_w) and depth.dtype == np.uint8
    cx, cy = fake.ME_CENTER[0] - box_x, fake.ME_CENTER[1] - box_y
    # apex is ME_DEPTH mm nearer at the blob centre: 128 + 16 * (-4)
    assert depth[cy, cx] == 128 - 16 * fake.ME_DEPTH
    px, py, pw, ph = fake.INVALID_PATCH  # no measurement in either frame
    assert (depth[py - box_y:py - box_y + ph, px - box_x:px - box_x + pw] == 128).all()
    dx, dy, dw, dh = fake.DROPOUT[(1, "a", 9)]  # no measurement in the apex frame only
    assert (depth[dy - box_y:dy - box_y + dh, dx - box_x:dx - box_x + dw] == 128).all()
    assert depth[dy - box_y, dx - box_x - 1] < 128
    assert np.abs(rgb[cy, cx].astype(int) - (128 + 2 * fake.me_amplitude(0))).max() <= 4  # JPEG
    assert (rgb[box_h - 8:, box_w - 8:] == 128).all()  # far from the blob: identical JPEG blocks


def test_gray_view_lists_and_images(prepared: tuple[Path, dict], release: fake.FakeRelease) -> None:
    """v_gray lists: the keys, labels and order of v_rgb; grey images: one 8-bit channel, the
    luma difference of the RGB frames the RGB image was made from."""
    out, report = prepared
    lists = out / "data"
    names = [f"{s}_{split}.txt" for s in TEST_COUNTS for split in ("train", "test")] + ["pretrain.txt"]
    for name in names:
        rgb = [line.split() for line in (lists / "v_rgb" / name).read_text().splitlines()]
        gray = [line.split() for line in (lists / "v_gray" / name).read_text().splitlines()]
        assert [[dataset.sample_key(p), *rest] for p, *rest in gray] == \
            [[dataset.sample_key(p), *rest] for p, *rest in rgb]
        for path, *_ in gray:
            assert path.endswith("_diff_gray.png") and ("/casme3_diff_gray_all/" in path
                                                        or path.startswith("casme3_pool/gray/"))
            with Image.open(out / path) as image:
                assert image.mode == "L" and image.size == fake.FACE_BOX[2:]
    assert len((lists / "v_gray" / "pretrain.txt").read_text().splitlines()) == report["pool"]["kept"]

    # R2 from its frames (box crop at the crop's own size: no resizing), as BGR the way OpenCV reads
    # them. The channel differences of two decoded JPEGs are integers, so 128 + 2 * luma is exact up
    # to the rounding of the weights, which only matters at a half-level tie: one level either way
    # there, equality everywhere else.
    x, y, w, h = fake.FACE_BOX
    frames = [cv2.imread(str(release.root / "RGB" / "spNO.1" / "a" / "color" / f"{f}.jpg"))[y:y + h, x:x + w]
              for f in (5, 9)]  # onset, apex
    b, g, r = np.moveaxis(frames[1].astype(np.float64) - frames[0], -1, 0)
    value = 128.0 + 2.0 * (0.299 * r + 0.587 * g + 0.114 * b)
    expected = np.clip(np.rint(value), 0, 255)
    tie = np.abs(value - np.floor(value) - 0.5) < 1e-6
    gray = cv2.imread(str(out / "casme3_diff_me4" / "casme3_diff_gray_all" / "negative" / f"{R2_KEY}_gray.png"),
                      cv2.IMREAD_UNCHANGED)
    assert gray.dtype == np.uint8 and gray.shape == (h, w)
    assert np.array_equal(gray[~tie], expected[~tie])
    assert np.abs(gray.astype(int) - expected).max() <= 1
    assert gray.min() < 128 - 10 or gray.max() > 128 + 10  # the ME blob shows: not a flat image


def test_anomalies_are_reported(prepared: tuple[Path, dict]) -> None:
    out, report = prepared
    assert report["item_counts"]["skipped"] == {"apex_equals_onset": 1, "duplicate": 1, "missing_folder": 1,
                                                "missing_frame": 1, "unknown_emotion": 1}
    anomalies = report["item_counts"]["anomaly"]
    assert anomalies["folder_spelling"] == 4  # spNo.2 and spNO210, in RGB/ and depth/
    assert anomalies["subject_spelling"] == 1 and anomalies["uppercase_task"] == 1
    assert anomalies["several_mes"] == 4 and anomalies["offset"] == 1
    assert report["counted"]["no_inner_depth_folder"]["count"] == 2
    assert report["counted"]["frame_in_one_view"]["count"] == 1
    details = {(i["kind"], i["source"].rsplit(" ", 1)[-1]): i["detail"] for i in report["items"]}
    assert "depth frame 11 missing" in details[("missing_frame", "7")]
    assert "spNO.9" in details[("missing_folder", "13")]
    assert "row 2" in details[("duplicate", "12")]
    text = (out / "prepare_report.txt").read_text()
    assert "class counts per subject" in text and "[apex_equals_onset]" in text
    counts = {row["subject"]: int(row["total"]) for row in read_csv(out / "class_counts.csv")}
    assert counts == TEST_COUNTS
    assert len(read_csv(out / "report_items.csv")) == len(report["items"])


def test_calibration_and_filtering(prepared: tuple[Path, dict]) -> None:
    out, report = prepared
    labeled = read_csv(out / "intensity_labeled.csv")
    threshold = report["threshold"]
    assert threshold["source"] == "calibrated" and threshold["n_labeled"] == len(labeled) == 8
    assert threshold["value"] == pytest.approx(np.percentile([float(r["mad"]) for r in labeled], 5), rel=1e-5)
    assert threshold["value"] > 0
    n_videos = len(fake.PART_A) * len(fake.PART_A_VIDEOS) + len(fake.PART_B) * len(fake.PART_B_VIDEOS)
    straddling = [f for f in range(1, fake.N_FRAMES - GAP + 1, STRIDE) if f < fake.EVENT_START <= f + GAP]
    pool = read_csv(out / "intensity_pool.csv")
    kept = [r for r in pool if r["kept"] == "1"]
    assert report["pool"]["kept"] == len(kept) == n_videos * len(straddling)
    assert report["pool"]["dropped"] == len(pool) - len(kept) == report["pool"]["pairs"] - len(kept)
    assert all(int(r["frame1"]) in straddling for r in kept)
    assert all(float(r["intensity"]) == 0 for r in pool if r["kept"] == "0")
    lines = (out / "data" / "v_rgb" / "pretrain.txt").read_text().splitlines()
    assert len(lines) == len(kept) and all(line.split()[1:3] == ["-1", "0"] for line in lines)
    assert all(float(line.split()[3]) >= threshold["value"] for line in lines)
    assert cv2.imread(str(out / "intensity_histogram.png")) is not None
    au = {(r["video"], r["frame1"]): r["au"] for r in pool if r["subject"] == "spNO.1"}
    assert float(au[("a", "25")]) == pytest.approx(2.5)  # AU01 steps up at EVENT_START
    assert au[("a", "28")] == ""  # frame 28 failed in OpenFace (success 0)
    assert au[("j", "25")] == ""  # no CSV for that video
    r2 = next(r for r in labeled if r["key"] == R2_KEY)
    assert float(r2["au"]) == pytest.approx(0.05 * 4)


def flip_crc(path: Path) -> None:
    """Damage the CRC of a PNG's first IDAT chunk (its pixels still decode)."""
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 4 + int.from_bytes(data[idat - 4:idat], "big")] ^= 0xFF
    path.write_bytes(bytes(data))


def test_rerun_reuses_whole_outputs_remakes_damaged_ones_and_refuses_other_image_settings(
        prepared: tuple[Path, dict], release: fake.FakeRelease, capsys: pytest.CaptureFixture) -> None:
    """A re-run reuses every pair whose images are whole PNGs; one missing, cut short or with a bad
    CRC is made again from its frames. Another image setting is refused; another threshold is not."""
    out, first = prepared
    image = out / "casme3_pool" / "rgb" / "spNO.1" / "spNO.1-a-31-spNO.1-a-25_diff.png"
    stamp = image.stat().st_mtime_ns
    labeled = out / "casme3_diff_me4"
    (labeled / "casme3_diff_depth_all" / "negative" / f"{R2_KEY}_depth.png").unlink()
    cut = next((labeled / "casme3_diff_gray_all" / "surprise").iterdir())
    cut.write_bytes(cut.read_bytes()[:-40])
    flip_crc(bad_crc := next((labeled / "casme3_diff_imgs_all" / "positive").iterdir()))
    again = cli.main(full_argv(release, out))
    assert (again["labeled"]["written"], again["labeled"]["reused"]) == (3, 5)
    assert (again["pool"]["written"], again["pool"]["reused"]) == (0, first["pool"]["kept"])
    assert again["pool"]["dropped"] == first["pool"]["dropped"]
    assert image.stat().st_mtime_ns == stamp
    for path in (cut, bad_crc):
        with Image.open(path) as whole:
            whole.verify()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    line = fails(cli.main, full_argv(release, out)[:-3] + ["--image_size", "32", "--calibrate"], capsys)
    assert line == (f"error: {out / 'run.json'}: this folder holds a run of other settings (--image_size 0 there, "
                    f"32 here); pass another folder, or --overwrite to replace it")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    given = cli.main([*full_argv(release, out)[:-1], "--intensity_threshold", "0"])  # the lists' settings may change
    assert (given["labeled"]["reused"], given["pool"]["kept"], given["pool"]["written"]) == \
        (8, first["pool"]["pairs"], first["pool"]["dropped"])
    assert util.read_record(out).settings["intensity_threshold"] == 0


def test_damaged_source_frames_are_reported_and_left_out(release: fake.FakeRelease, tmp_path: Path,
                                                         capfd: pytest.CaptureFixture) -> None:
    """A source JPEG cut short, one with corrupt data inside (its end marker kept) and a 0-byte one
    are reported and their MEs left out: OpenCV alone would only warn and decode them, or fail."""
    root = Path(shutil.copytree(release.root, tmp_path / "partA"))
    out = tmp_path / "out"
    argv = ["--root", str(root), "--annotation", str(release.annotation), "--out", str(out), "--crop", "none",
            "--image_size", "32", "--pool", "none"]
    first = cli.main(argv)
    assert (first["labeled"]["written"], first["labeled"]["reused"]) == (8, 0)
    color = root / "RGB"
    cut, corrupt, empty = (color / "spNO.1" / "a" / "color" / "9.jpg", color / "spNO.3" / "a" / "color" / "14.jpg",
                           color / "spNO210" / "a" / "color" / "6.jpg")  # rows 2 (apex), 8 (apex), 10 (onset)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    corrupt.write_bytes(corrupt_middle(corrupt.read_bytes()))
    empty.write_bytes(b"")
    capfd.readouterr()
    again = cli.main(argv)
    assert (again["labeled"]["samples"], again["labeled"]["written"], again["labeled"]["reused"]) == (5, 0, 5)
    found = {(i["category"], i["kind"], i["source"].rsplit(" ", 1)[-1], i["detail"]) for i in again["items"]
             if i["kind"].endswith("_frame") and i["kind"] != "missing_frame"}
    assert found == {
        ("skipped", "truncated_frame", "2", f"RGB frame {cut} is truncated (no JPEG end marker FFD9)"),
        ("skipped", "corrupt_frame", "8", f"RGB frame {corrupt} is corrupt (libjpeg: Corrupt JPEG data: premature end "
                                          f"of data segment)"),
        ("skipped", "unreadable_frame", "10", f"RGB frame {empty} is empty (0 bytes)")}
    assert "JPEG" not in capfd.readouterr().err
    listed = "".join(p.read_text() for p in (out / "data").glob("v_*/*.txt"))
    assert R2_KEY not in listed and "spNO.3-a-14-" not in listed and "spNO.210-a-10-" not in listed
    text = (out / "prepare_report.txt").read_text()
    assert "[corrupt_frame]" in text and "[unreadable_frame]" in text


# ---------------------------------------------------------------------------------------------
# Other options and errors


@pytest.mark.slow
def test_three_classes_face_crop_workers_and_given_threshold(release: fake.FakeRelease, tmp_path: Path) -> None:
    out = tmp_path / "three"
    report = cli.main(prepare_argv(release, out, "--classes", "3", "--crop", "face", "--image_size", "32",
                                   "--workers", "2", "--intensity_threshold", "0.5"))
    lists = out / "data"
    assert (lists / "classes.txt").read_text().split() == ["negative", "positive", "surprise"]
    assert dataset.subject_names(lists) == ["spNO1", "spNO3", "spNO210"]  # spNO2 had only 'others' left
    assert report["item_counts"]["excluded"] == {"class_map": 3}
    assert report["item_counts"]["anomaly"]["no_face"] == 6  # flat fake frames: whole frame used
    samples = dataset.load_labeled(lists, out, dataset.subject_names(lists), strict_pairs=True)
    assert sorted(s.label for s in samples) == [0, 0, 1, 1, 2, 2]
    assert all(p.parts[-4] == "casme3_diff_me3" for s in samples for p in (s.rgb_path, s.depth_path))
    assert cv2.imread(str(samples[0].rgb_path)).shape == (32, 32, 3)
    assert report["threshold"]["source"] == "given" and report["pool"]["parts"] == ["Part A"]
    straddling = [f for f in range(1, fake.N_FRAMES - GAP + 1, STRIDE) if f < fake.EVENT_START <= f + GAP]
    kept = len(fake.PART_A) * len(fake.PART_A_VIDEOS) * len(straddling)
    assert report["pool"]["kept"] == kept and report["pool"]["dropped"] == report["pool"]["pairs"] - kept
    assert len(dataset.load_pool(lists, out, strict_pairs=True)) == kept


def test_bad_inputs_give_one_line_naming_the_problem(release: fake.FakeRelease, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    annotation = tmp_path / "label.csv"
    annotation.write_text("Subject,Filename,Onset,Apex,Offset\nspNO.1,a,5,9,13\n")
    with pytest.raises(util.UserError, match=r"label.csv: no header row with the columns Subject, Filename, Onset, Apex, "
                                             r"Offset, emotion in the first 40 rows \(closest: row 1, without 'emotion'\)"):
        cli.main(["--root", str(release.root), "--annotation", str(annotation), "--out", str(tmp_path / "o")])
    with pytest.raises(util.UserError, match=r"inside the input tree --root"):
        cli.main(prepare_argv(release, release.root / "prepared"))
    assert not (release.root / "prepared").exists()
    with pytest.raises(util.UserError, match=r"row 5: Apex == Onset == 8.*--strict"):
        cli.main(prepare_argv(release, tmp_path / "strict", "--crop", "none", "--strict"))
    line = fails(cli.main, prepare_argv(release, tmp_path / "o", "--box_file", str(tmp_path / "boxes.csv")), capsys)
    assert line == f"error: {tmp_path / 'boxes.csv'}: --box_file file not found"


# ---------------------------------------------------------------------------------------------
# End to end, as docs/casme3-preparation.md "Running it on the fake release": fake release -> prepare ->
# pre-train -> LOSO


@pytest.mark.slow
def test_end_to_end_prepare_pretrain_loso(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune = util.load_script("fine-tune_CVSCL.py")
    pretrain = util.load_script("pre-train_CVSCL.py")

    raw, data = tmp_path / "raw", tmp_path / "casme3"
    subprocess.run([sys.executable, "scripts/data/make_fake_casme3.py", "--out", str(raw)], cwd=REPO, check=True,
                   capture_output=True)
    monkeypatch.setattr(sys, "argv", [
        "prepare_casme3.py", "--root", str(raw / "partA"), "--part_b_root", str(raw / "partB"),
        "--annotation", str(raw / fake.ANNOTATION_NAME), "--box_file", str(raw / "boxes.csv"),
        "--au_dir", str(raw / "openface"), "--out", str(data), "--image_size", "64", "--stride", "3",
        "--calibrate"])
    runpy.run_path(str(REPO / "scripts" / "data" / "prepare_casme3.py"), run_name="__main__")
    run_folder = pretrain.main(["--data_folder", str(data), "--model_path", str(tmp_path / "models"),
                                "--tb_path", str(tmp_path / "tb"), "--epochs", "1", "--batch_size", "8",
                                "--nce_k", "16", "--num_workers", "0", "--image_size", "64"])
    results = finetune.main(["--data_folder", str(data), "--model_path", str(Path(run_folder) / "last.pth"),
                             "--save_path", str(tmp_path / "loso"), "--tb_path", str(tmp_path / "tb"),
                             "--subjects", "spNO1,spNO3", "--epochs", "1", "--image_size", "64",
                             "--layer", "5"])
    files = list((tmp_path / "loso").glob("*/results.json"))
    assert len(files) == 1
    assert json.loads(files[0].read_text()) == json.loads(json.dumps(results))
