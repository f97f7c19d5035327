"""MEGC2019 composite preparation (`scripts.datatools.megc2019`, `scripts/data/prepare_megc2019.py`) on
the fake releases of `scripts.datatools.megc2019.fake`."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dataset
from scripts.data import prepare_megc2019 as cli
from scripts.datatools.megc2019 import databases as db
from scripts.datatools.megc2019 import fake
from scripts.datatools.common.sheets import read_sheet
from scripts.datatools.megc2019.images import apex_image
from helpers import corrupt_middle, fails, run_megc2019_prepare

COUNTS = {"smic": {"negative": 2, "positive": 2, "surprise": 1},
          "casme2": {"negative": 4, "positive": 1, "surprise": 1},
          "samm": {"negative": 4, "positive": 1, "surprise": 1}}
SUBJECTS = {"smic": ["smic_s1", "smic_s2"], "casme2": ["casme2_sub01", "casme2_sub02"],
            "samm": ["samm_006", "samm_007"]}
EXCLUDED = {"casme2 fear": 1, "casme2 others": 1, "samm other": 1}
# kind, where (a sheet row or a folder), part of the detail: the anomalies of the fake releases
# that are always left out
LEFT_OUT = {
    ("too_few_frames", "s2_ne_02", "1 frame(s)"),
    ("missing_frame", f"{db.CASME2_SHEET} row 10", "frame 63 is missing"),
    ("missing_folder", f"{db.CASME2_SHEET} row 11", "sub03/EP01_01: no clip folder"),
    ("duplicate", f"{db.SAMM_SHEET} row 21", f"as {db.SAMM_SHEET} row 15"),
}
# the rows whose apex the sheet lacks or gets wrong: clip, sheet row, apex_reason, and as LEFT_OUT's
# rows with --no_estimate_bad_apex
BAD_APEX = {
    ("EP06_01f", f"{db.CASME2_SHEET} row 8", "apex '/'"): ("bad_row", "apex '/' is not a frame number"),
    ("EP08_04", f"{db.CASME2_SHEET} row 9", "apex outside the clip"):
        ("apex_outside_clip", "apex frame 70 is outside the clip (frames 38..53)"),
    ("006_2_1", f"{db.SAMM_SHEET} row 20", "apex outside the clip"):
        ("apex_outside_clip", "apex frame 740 is outside the clip (frames 698..713)"),
    ("007_4_1", f"{db.SAMM_SHEET} row 22", "apex '-1'"): ("bad_row", "apex '-1' is not a frame number"),
}
LEFT_OUT_WITHOUT_ESTIMATE = LEFT_OUT | {(kind, where, detail) for (_, where, _), (kind, detail) in BAD_APEX.items()}


@pytest.fixture(scope="module")
def prepared_without_estimate(megc2019_releases: fake.FakeReleases,
                              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str, str]:
    """As `megc2019_prepared` (conftest.py), with --no_estimate_bad_apex."""
    return run_megc2019_prepare(megc2019_releases, tmp_path_factory.mktemp("no_estimate") / "megc2019",
                                "--no_estimate_bad_apex")


def read_samples(out: Path) -> list[dict[str, str]]:
    with (out / "megc2019_samples.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------
# Counts, mapping, subjects, lists


def test_counts_subjects_and_printed_table(megc2019_prepared: tuple[Path, dict, str, str]) -> None:
    out, summary, stdout, _ = megc2019_prepared
    assert summary["counts"] == COUNTS and summary["subjects"] == SUBJECTS and summary["samples"] == 17
    assert summary["excluded"] == EXCLUDED
    table = stdout.splitlines()
    assert table[1].split() == ["database", "dbtype", "subjects", "negative", "positive", "surprise", "total"]
    assert [line.split() for line in table[2:6]] == [
        ["smic", "1", "2", "2", "2", "1", "5"], ["casme2", "2", "2", "4", "1", "1", "6"],
        ["samm", "3", "2", "4", "1", "1", "6"], ["all", "6", "10", "4", "3", "17"]]
    assert "excluded by the MEGC2019 mapping: casme2 fear 1, casme2 others 1, samm other 1" in stdout
    assert (out / "prepare_report.txt").read_text().startswith(stdout)


def test_megc2019_mapping(megc2019_prepared: tuple[Path, dict, str, str]) -> None:
    samples = read_samples(megc2019_prepared[0])
    mapped = {(s["database"], s["emotion"]): s["class"] for s in samples}
    assert mapped == {("smic", "negative"): "negative", ("smic", "positive"): "positive",
                      ("smic", "surprise"): "surprise", ("casme2", "happiness"): "positive",
                      ("casme2", "disgust"): "negative", ("casme2", "repression"): "negative",
                      ("casme2", "surprise"): "surprise", ("samm", "anger"): "negative",
                      ("samm", "contempt"): "negative", ("samm", "disgust"): "negative",
                      ("samm", "fear"): "negative", ("samm", "happiness"): "positive",
                      ("samm", "surprise"): "surprise"}
    assert all(int(s["label"]) == db.CLASSES.index(s["class"]) for s in samples)
    assert db.CLASSES == ("negative", "positive", "surprise")
    for database, emotions in db.EMOTION_CLASS.items():  # MEGC2019's own lists
        negative = {e for e, c in emotions.items() if c == "negative"}
        assert negative == {"smic": {"negative"}, "casme2": {"disgust", "repression"},
                            "samm": {"anger", "contempt", "disgust", "fear", "sadness"}}[database]


def test_lists_dbtypes_and_loso_splits(megc2019_prepared: tuple[Path, dict, str, str]) -> None:
    out = megc2019_prepared[0]
    lists = out / "data" / "v_rgb"
    names = (lists / "subName.txt").read_text().split()
    assert names == [s for database in db.DATABASES for s in SUBJECTS[database]]
    assert (out / "data" / "classes.txt").read_text().split() == list(db.CLASSES)
    assert not (out / "data" / "v_depth").exists()
    everything = set()
    for subject in names:
        test = dataset.read_list(lists / f"{subject}_test.txt", out)
        train = dataset.read_list(lists / f"{subject}_train.txt", out)
        database = subject.split("_")[0]
        assert {e.dbtype for e in test} == {db.DBTYPES[database]}
        assert all(e.path.name.startswith(f"{subject}-") for e in test)
        test_keys, train_keys = ({dataset.sample_key(e.path) for e in entries} for entries in (test, train))
        assert not test_keys & train_keys and not any(k.startswith(f"{subject}-") for k in train_keys)
        everything |= test_keys
        assert len(test_keys | train_keys) == 17
    assert len(everything) == 17
    assert db.DBTYPES == {"smic": 1, "casme2": 2, "samm": 3}


def test_images_are_signed_rgb_differences(megc2019_prepared: tuple[Path, dict, str, str]) -> None:
    out = megc2019_prepared[0]
    for sample in read_samples(out):
        with Image.open(out / sample["rgb"]) as image:
            assert image.mode == "RGB" and image.size == (64, 64)
            pixels = np.asarray(image).astype(int)
        # the fake blob brightens towards the apex; elsewhere the clip barely changes
        y, x = (round(c * 64 / s) for c, s in zip(fake.BLOB_CENTER[::-1], (fake.FRAME_H, fake.FRAME_W)))
        assert pixels[y, x].min() > 128 + 20, sample["key"]
        assert abs(np.median(pixels) - 128) <= 3, sample["key"]
        if sample["database"] == "samm":  # greyscale frames: three equal channels
            assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_smic_apex_is_estimated(megc2019_prepared: tuple[Path, dict, str, str]) -> None:
    samples = read_samples(megc2019_prepared[0])
    smic = {s["clip"]: (int(s["apex"]), s["apex_source"], s["apex_reason"]) for s in samples if s["database"] == "smic"}
    assert smic == {clip: (apex, "estimated", "no apex annotation") for clip, apex in fake.SMIC_APEX.items()}
    bad_apex = {clip for clip, _, _ in BAD_APEX}
    annotated = [s for s in samples if s["database"] != "smic" and s["clip"] not in bad_apex]
    assert len(annotated) == 8 and {(s["apex_source"], s["apex_reason"]) for s in annotated} == {("annotated", "")}


def test_bad_sheet_apex_is_estimated_by_default(megc2019_prepared: tuple[Path, dict, str, str]) -> None:
    out, summary, stdout, stderr = megc2019_prepared
    samples = {s["clip"]: s for s in read_samples(out)}
    estimated = {clip: (int(samples[clip]["apex"]), samples[clip]["apex_source"], samples[clip]["apex_reason"])
                 for clip, _, _ in BAD_APEX}
    # the estimate is the frame where the fake clip's blob peaks (its largest difference from the onset)
    assert set(fake.BAD_APEX_PEAK) == set(estimated)
    assert estimated == {clip: (fake.BAD_APEX_PEAK[clip], "estimated", reason) for clip, _, reason in BAD_APEX}
    assert all(s["key"].startswith(f"{s['subject']}-{s['clip']}-{s['apex']}-") for s in samples.values())
    assert summary["bad_apex_estimated"] == {"CASME II apex '/'": 1, "CASME II apex outside the clip": 1,
                                             "SAMM apex '-1'": 1, "SAMM apex outside the clip": 1}
    assert summary["estimated_apex"] == {**summary["bad_apex_estimated"], "SMIC-HS no apex annotation": 5}
    assert ("kept 17 of the 442 samples of the standard composite (SMIC-HS 5 of 164, CASME II 6 of 145, SAMM 6 of "
            "133): 4 left out (duplicate: 1, missing_folder: 1, missing_frame: 1, too_few_frames: 1), 421 not in the "
            "given releases; 4 with an estimated apex (CASME II apex '/': 1, CASME II apex outside the clip: 1, "
            "SAMM apex '-1': 1, SAMM apex outside the clip: 1)\n") in stdout
    assert "apex estimated for 9 clips, 5 of them SMIC's (no apex annotation)" in stdout
    assert not any(where in line for line in stderr.splitlines() for _, where, _ in BAD_APEX)
    report = (out / "prepare_report.txt").read_text()
    assert "apex estimated (9):" in report
    assert f"  [apex '-1'] {db.SAMM_SHEET} row 22: apex estimated: frame 1507 of frames 1500..1513" in report
    assert f"  [apex '/'] {db.CASME2_SHEET} row 8: apex estimated: frame 19 of frames 12..25" in report


def test_bad_sheet_apex_left_out_without_estimate(prepared_without_estimate: tuple[Path, dict, str, str]) -> None:
    out, summary, stdout, stderr = prepared_without_estimate
    found = {(i["kind"], i["source"], i["detail"]) for i in summary["left_out"]}
    assert len(found) == len(LEFT_OUT_WITHOUT_ESTIMATE) == 8
    for kind, where, detail in LEFT_OUT_WITHOUT_ESTIMATE:
        assert any(k == kind and where in s + d and detail in d for k, s, d in found), (kind, where)
    assert len([line for line in stderr.splitlines() if line.startswith("warning: ")]) == 8
    samples = read_samples(out)
    assert len(samples) == summary["samples"] == 13
    assert not {s["clip"] for s in samples} & {clip for clip, _, _ in BAD_APEX}
    assert {s["apex_source"] for s in samples if s["database"] != "smic"} == {"annotated"}
    assert summary["bad_apex_estimated"] == {} and summary["estimated_apex"] == {"SMIC-HS no apex annotation": 5}
    assert ("kept 13 of the 442 samples of the standard composite (SMIC-HS 5 of 164, CASME II 4 of 145, SAMM 4 of "
            "133): 8 left out (apex_outside_clip: 2, bad_row: 2, duplicate: 1, missing_folder: 1, missing_frame: 1, "
            "too_few_frames: 1), 421 not in the given releases; 0 with an estimated apex (--no_estimate_bad_apex: "
            "rows with a bad apex left out)\n") in stdout
    assert "left out (8):" in (out / "prepare_report.txt").read_text()


def test_apex_image_blurs_noise() -> None:
    rng = np.random.default_rng(0)
    noisy = np.clip(128 + rng.normal(0, 8, (96, 96, 3)), 0, 255)
    image = apex_image(noisy, (0, 0, 96, 96))
    assert image.shape == (64, 64) and image.dtype == np.float32
    assert image.std() < 4  # the raw noise, 8 levels per channel, mostly averaged away


# ---------------------------------------------------------------------------------------------
# Anomalies and errors


def test_anomalies_are_reported_and_left_out(megc2019_prepared: tuple[Path, dict, str, str]) -> None:
    out, summary, _, stderr = megc2019_prepared
    found = {(i["kind"], i["source"], i["detail"]) for i in summary["left_out"]}
    assert len(found) == len(LEFT_OUT)
    for kind, where, detail in LEFT_OUT:
        assert any(k == kind and where in s + d and detail in d for k, s, d in found), (kind, where)
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == len(LEFT_OUT) and all(line.endswith("; left out") for line in warnings)
    assert not any("EP09_02" in s["clip"] or "EP01_01" == s["clip"] for s in read_samples(out))
    # the fake frames hold no face: the whole frame is used, and each clip says so
    assert {i["kind"] for i in summary["notes"]} == {"no_face"} and len(summary["notes"]) == 17
    report = (out / "prepare_report.txt").read_text()
    assert "left out (4):" in report and "[duplicate]" in report


def test_damaged_frames_are_reported_and_their_clips_left_out(megc2019_releases: fake.FakeReleases,
                                                               tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """A frame with corrupt data inside (its JPEG end marker kept) and a 0-byte onset frame are
    reported and their clips left out, with a warning and no decoder message."""
    casme2, samm = (Path(shutil.copytree(root, tmp_path / root.name))
                    for root in (megc2019_releases.casme2, megc2019_releases.samm))
    apex = casme2 / db.CASME2_FRAMES / "sub01" / "EP02_01f" / "img50.jpg"  # sheet row 2: onset 46, apex 50
    onset = samm / "006" / "006_1_3" / "006_01200.jpg"  # sheet row 16: onset 1200
    apex.write_bytes(corrupt_middle(apex.read_bytes()))
    onset.write_bytes(b"")
    capfd.readouterr()
    summary = cli.main(["--casme2", str(casme2), "--samm", str(samm), "--out", str(tmp_path / "out"),
                        "--image_size", "64", "--crop", "none"])
    damaged = [(i["kind"], i["source"], i["detail"]) for i in summary["left_out"]
               if i["kind"] in ("corrupt_frame", "unreadable_frame")]
    assert damaged == [
        ("corrupt_frame", f"{db.CASME2_SHEET} row 2", f"RGB frame {apex} is corrupt (libjpeg: Corrupt JPEG data: "
                                                      f"premature end of data segment)"),
        ("unreadable_frame", f"{db.SAMM_SHEET} row 16", f"RGB frame {onset} is empty (0 bytes)")]
    assert summary["samples"] == 10 and "EP02_01f" not in (tmp_path / "out" / "megc2019_samples.csv").read_text()
    err = capfd.readouterr().err  # the warning, and no decoder message
    assert f"warning: {db.CASME2_SHEET} row 2: {damaged[0][2]}; left out\n" in err and err.count("JPEG") == 1


def test_corrupt_sheet_is_one_error_line(megc2019_releases: fake.FakeReleases, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    corrupt = tmp_path / db.CASME2_SHEET
    corrupt.write_bytes(b"PK\x03\x04 this is not a workbook")
    line = fails(cli.main, ["--casme2", str(megc2019_releases.casme2), "--casme2_sheet", str(corrupt),
                            "--out", str(tmp_path / "out")], capsys)
    assert line.startswith(f"error: {corrupt}: cannot read the workbook (")

    no_header = tmp_path / "sheet.csv"
    no_header.write_text("Subject,Filename,Onset,Apex\n1,EP02_01f,46,50\n")
    line = fails(cli.main, ["--casme2", str(megc2019_releases.casme2), "--casme2_sheet", str(no_header),
                            "--out", str(tmp_path / "out")], capsys)
    assert line == (f"error: {no_header}: no header row with the columns {', '.join(db.CASME2_COLUMNS)} in the "
                    f"first 40 rows (closest: row 1, without 'OnsetFrame', 'ApexFrame', 'OffsetFrame', "
                    f"'Estimated Emotion')")
    assert not (tmp_path / "out" / "data").exists()


def test_bad_flags_are_one_error_line(megc2019_releases: fake.FakeReleases, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    assert fails(cli.main, ["--out", str(tmp_path / "o")], capsys) == \
        "error: no database given: pass at least one of --smic, --casme2, --samm"
    line = fails(cli.main, ["--samm", str(megc2019_releases.samm), "--out", str(megc2019_releases.samm / "out")],
                 capsys)
    assert "is inside the input tree --samm" in line
    assert fails(cli.main, ["--smic", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], capsys) == \
        f"error: {tmp_path / 'nowhere'}: --smic folder not found"


def test_sheet_header_below_description_rows(megc2019_releases: fake.FakeReleases) -> None:
    sheet = read_sheet(megc2019_releases.samm / db.SAMM_SHEET,
                       ("Subject", "Filename", "Onset Frame", "Estimated Emotion"))
    first_row, cells = sheet.rows[0]
    assert first_row == fake.SAMM_PREAMBLE + 2
    assert cells["onsetframe"] == 5562 and cells["estimatedemotion"] == "Anger"
    assert db.subject_name("samm", 6) == "samm_006" and db.subject_name("casme2", 1) == "casme2_sub01"
    assert db.subject_name("smic", 12) == "smic_s12"
