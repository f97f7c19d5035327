"""What every data tool shares: the run record of the folder it writes (`util.claim_folder`), the
range of its numeric flags, and the pieces of `scripts.datatools.common` (spreadsheets, verified
frames and PNGs, the format's write side)."""
from __future__ import annotations

import os
import struct
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

import util
from scripts.data import make_fake_casme3, make_fake_megc2019, make_published_split, make_synthetic_casme3
from scripts.data import prepare_casme3, prepare_megc2019
from scripts.datatools import fake_release
from scripts.datatools.casme3.images import depth_difference
from scripts.datatools.common import crop, format as fmt, frames, sheets
from scripts.datatools.megc2019 import fake as fake_megc
from helpers import corrupt_middle, fails

PROG = Path(sys.argv[0]).name  # what argparse calls a tool run in this process
SPLIT_ROW = ("spNO.1-a-9-spNO.1-a-5,spNO1,0,0,{x}/negative/spNO.1-a-9-spNO.1-a-5_diff.png,"
             "{x}/negative/spNO.1-a-9-spNO.1-a-5_diff_depth.png,{x}/negative/spNO.1-a-9-spNO.1-a-5_diff_gray.png")


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def split_csv(path: Path, *rows: str) -> Path:
    path.write_text("key,subject,label,dbtype,rgb,depth,gray\n" + "".join(f"{row}\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fake CAS(ME)^3 and MEGC2019 releases and a one-sample split CSV."""
    root = tmp_path_factory.mktemp("inputs")
    release, releases = fake_release.build_fake_release(root / "casme3"), fake_megc.build_fake_releases(root / "megc")
    return {"casme3": release.root, "annotation": release.annotation, "smic": releases.smic,
            "csv": split_csv(root / "split.csv", SPLIT_ROW.format(x="casme3_diff_me4/casme3_diff_imgs_all"))}


# Each data tool: its entry point, its tool name in the run record, and a quick command writing `out`.
TOOLS = {
    "prepare_casme3.py": (prepare_casme3.main, lambda i, out: [
        "--root", str(i["casme3"]), "--annotation", str(i["annotation"]), "--out", str(out), "--crop", "none",
        "--pool", "none", "--image_size", "16"]),
    "prepare_megc2019.py": (prepare_megc2019.main, lambda i, out: [
        "--smic", str(i["smic"]), "--out", str(out), "--crop", "none", "--image_size", "16"]),
    "make_synthetic_casme3.py": (make_synthetic_casme3.main, lambda i, out: [
        "--out", str(out), "--subjects", "2", "--samples_per_subject", "1", "--pool_per_subject", "1",
        "--pool_only_subjects", "0", "--image_size", "32"]),
    "make_fake_casme3.py": (make_fake_casme3.main, lambda i, out: ["--out", str(out)]),
    "make_fake_megc2019.py": (make_fake_megc2019.main, lambda i, out: ["--out", str(out)]),
    "make_published_split.py": (make_published_split.main, lambda i, out: ["--csv", str(i["csv"]), "--out", str(out)]),
}


@pytest.mark.parametrize("tool", TOOLS)
def test_a_folder_of_another_tool_or_unrecorded_files_is_refused_by_each_data_tool(
        tool: str, inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main, argv = TOOLS[tool]
    other = tmp_path / "other"
    util.claim_folder(other, "another-tool.py", {}, ("data",)).save()
    (other / "data").mkdir()
    (other / "data" / "kept.txt").write_text("theirs")
    unrecorded = tmp_path / "unrecorded"
    unrecorded.mkdir()
    (unrecorded / "notes.txt").write_text("mine")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    before = tree_bytes(tmp_path)
    expected = {other: f"error: {other / 'run.json'}: this folder was made by another-tool.py, not {tool}; pass "
                       f"another folder",
                unrecorded: f"error: {unrecorded}: holds files that no run record accounts for (e.g. notes.txt); "
                            f"pass a new or empty folder",
                a_file: f"error: {a_file}: not a folder",
                a_file / "sub": f"error: {a_file / 'sub' / 'run.json'}: cannot write here (Not a directory)"}
    for out, line in expected.items():
        assert fails(main, argv(inputs, out), capsys) == line
    assert tree_bytes(tmp_path) == before
    if os.geteuid() != 0:  # root writes into a read-only folder
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
        assert fails(main, argv(inputs, read_only), capsys).startswith(f"error: {read_only / 'run.json'}: ")


@pytest.mark.parametrize("tool", TOOLS)
def test_each_data_tool_owns_what_it_writes_and_overwrite_removes_only_that(
        tool: str, inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main, argv = TOOLS[tool]
    out = tmp_path / "out"
    util.run_cli(lambda: main(argv(inputs, out)))
    record = util.read_record(out)
    assert (record.tool, record.complete) == (tool, True)
    assert {p.name for p in out.iterdir()} == {p.name for p in record.owned_entries()} | {"run.json"}
    (out / "notes.txt").write_text("the user's own")
    written = sorted(tree_bytes(out))
    util.run_cli(lambda: main(argv(inputs, out)))  # the same command again: the same files
    assert sorted(tree_bytes(out)) == written
    util.run_cli(lambda: main([*argv(inputs, out), "--overwrite"]))
    assert (out / "notes.txt").read_text() == "the user's own" and util.read_record(out).complete
    assert sorted(tree_bytes(out)) == written


def test_the_data_loss_paths_are_refused_and_the_other_dataset_kept(
        inputs: dict[str, Path], synthetic_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """prepare_megc2019.py into a CAS(ME)^3 output, prepare_casme3.py into a synthetic dataset and
    make_published_split.py into a dataset's data/ once replaced or removed that dataset's lists."""
    casme3 = tmp_path / "casme3"
    util.run_cli(lambda: prepare_casme3.main(TOOLS["prepare_casme3.py"][1](inputs, casme3)))
    before = {root: tree_bytes(root) for root in (casme3, synthetic_data)}
    line = fails(prepare_megc2019.main, TOOLS["prepare_megc2019.py"][1](inputs, casme3), capsys)
    assert line == (f"error: {casme3 / 'run.json'}: this folder was made by prepare_casme3.py, not "
                    f"prepare_megc2019.py; pass another folder")
    line = fails(prepare_casme3.main, TOOLS["prepare_casme3.py"][1](inputs, synthetic_data), capsys)
    assert line == (f"error: {synthetic_data / 'run.json'}: this folder was made by make_synthetic_casme3.py, not "
                    f"prepare_casme3.py; pass another folder")
    for data in (casme3, synthetic_data):
        line = fails(make_published_split.main, ["--csv", str(inputs["csv"]), "--out", str(data / "data")], capsys)
        tool = util.read_record(data).tool
        assert line == (f"error: {data / 'data'}: lies in {data / 'data'}, which {tool} wrote ({data / 'run.json'}); "
                        f"pass a folder of its own")
    assert {root: tree_bytes(root) for root in before} == before


def test_a_rerun_with_other_settings_is_refused_naming_them(inputs: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "megc"
    argv = TOOLS["prepare_megc2019.py"][1](inputs, out)
    util.run_cli(lambda: prepare_megc2019.main(argv))
    before = tree_bytes(out)
    line = fails(prepare_megc2019.main, [*argv, "--rgb_gain", "4", "--no_estimate_bad_apex"], capsys)
    assert line == (f"error: {out / 'run.json'}: this folder holds a run of other settings (--estimate_bad_apex "
                    f"True there, False here; --rgb_gain 2.0 there, 4.0 here); pass another folder, or --overwrite "
                    f"to replace it")
    assert tree_bytes(out) == before


@pytest.mark.parametrize("main, argv, message", [
    (prepare_casme3.main, ["--gap", "0"], "argument --gap: 0: must be a whole number > 0"),
    (prepare_casme3.main, ["--crop_margin", "-0.1"], "argument --crop_margin: -0.1: must be a number >= 0"),
    (prepare_casme3.main, ["--rgb_gain", "nan"], "argument --rgb_gain: nan: must be a number > 0"),
    (prepare_casme3.main, ["--workers", "two"], "argument --workers: 'two': expected a whole number >= 0"),
    (prepare_megc2019.main, ["--image_size", "-1"], "argument --image_size: -1: must be a whole number >= 0"),
    (make_synthetic_casme3.main, ["--blink_rate", "2"], "argument --blink_rate: 2: must be a number in [0, 1]"),
    (make_synthetic_casme3.main, ["--head_motion_px", "-1"], "argument --head_motion_px: -1: must be a number >= 0"),
    (make_synthetic_casme3.main, ["--seed", "-3"], "argument --seed: -3: must be a seed in 0..4294967295"),
])
def test_a_number_out_of_its_flags_range_is_one_usage_line(main: Callable, argv: list[str], message: str,
                                                           capsys: pytest.CaptureFixture) -> None:
    required = {prepare_casme3.main: ["--root", "r", "--annotation", "a.csv", "--out", "o"],
                prepare_megc2019.main: ["--smic", "s", "--out", "o"], make_synthetic_casme3.main: ["--out", "o"]}
    assert fails(main, [*required[main], *argv], capsys) == f"{PROG}: error: {message} (see {PROG} --help)"


# ---------------------------------------------------------------------------------------------
# The pieces: spreadsheets, frames, PNGs, encoding


def test_a_sheet_is_read_under_the_header_its_columns_name(tmp_path: Path) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    book.active.title = "notes"
    book.active.append(("nothing here",))
    sheet = book.create_sheet("codes")
    for row in (("SAMM codes",), (), ("Subject", " Onset  Frame", "Estimated Emotion"), (6, 5562.0, "Anger"), (),
                ("007", "12", "Other")):
        sheet.append(row)
    book.save(tmp_path / "codes.xlsx")
    read = sheets.read_sheet(tmp_path / "codes.xlsx", ("subject", "OnsetFrame", "Estimated Emotion"))
    assert (read.sheet, read.headers) == ("codes", ("Subject", "Onset  Frame", "Estimated Emotion"))
    assert read.rows == ((4, {"subject": 6, "onsetframe": 5562.0, "estimatedemotion": "Anger"}),
                         (6, {"subject": "007", "onsetframe": "12", "estimatedemotion": "Other"}))
    assert [sheets.cell_int(read.rows[0][1]["onsetframe"]), sheets.cell_text(read.rows[0][1]["onsetframe"])] == \
        [5562, "5562"]
    with pytest.raises(ValueError):
        sheets.cell_int("4.5")
    with pytest.raises(util.UserError) as error:
        sheets.read_sheet(tmp_path / "codes.xlsx", ("Subject", "Apex Frame", "Estimated Emotion"))
    assert str(error.value) == (f"{tmp_path / 'codes.xlsx'}: no header row with the columns Subject, Apex Frame, "
                                f"Estimated Emotion in the first 40 rows of any sheet (closest: row 3 of sheet "
                                f"'codes', without 'Apex Frame')")
    with pytest.raises(util.UserError, match=r"codes.xlsx: no sheet 'label' \(sheets: notes, codes\)"):
        sheets.read_sheet(tmp_path / "codes.xlsx", ("Subject",), sheet="label")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"Subject,Onset\nspNO.1,5\nspNO.2,caf\xe9\n")
    with pytest.raises(util.UserError) as error:
        sheets.read_sheet(latin, ("Subject",))
    assert str(error.value) == f"{latin}:3: byte 0xe9 is not UTF-8 (save the file as UTF-8)"


def jpeg_bytes(tmp_path: Path) -> bytes:
    """A 80 x 64 frame of the fake release as OpenCV writes it (quality 95)."""
    _, bgr, _ = fake_release.render_frames(1, "a")[8]
    fake_release.write_rgb_frame(tmp_path, 9, bgr)
    return (tmp_path / "9.jpg").read_bytes()


def test_source_frames_are_verified_not_trusted(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """A whole frame decodes as OpenCV decodes it; an empty, cut-short, corrupt or undecodable one
    is a FrameError of its kind, and libjpeg's warnings never reach stderr."""
    data = jpeg_bytes(tmp_path)
    damaged = {"empty.jpg": b"", "cut.jpg": data[: len(data) // 2], "corrupt.jpg": corrupt_middle(data),
               "noise.jpg": b"\xff\xd8garbage\xff\xd9"}
    for name, content in damaged.items():
        (tmp_path / name).write_bytes(content)
    assert np.array_equal(frames.read_rgb(str(tmp_path / "9.jpg")), cv2.imread(str(tmp_path / "9.jpg")))
    capfd.readouterr()
    found = {}
    for name in damaged:
        with pytest.raises(frames.FrameError) as error:
            frames.read_rgb(str(tmp_path / name))
        found[name] = (error.value.kind, str(error.value))
    path = {name: tmp_path / name for name in damaged}
    assert found == {
        "empty.jpg": ("unreadable_frame", f"RGB frame {path['empty.jpg']} is empty (0 bytes)"),
        "cut.jpg": ("truncated_frame", f"RGB frame {path['cut.jpg']} is truncated (no JPEG end marker FFD9)"),
        "corrupt.jpg": ("corrupt_frame", f"RGB frame {path['corrupt.jpg']} is corrupt (libjpeg: Corrupt JPEG data: "
                                         f"premature end of data segment)"),
        "noise.jpg": ("unreadable_frame", f"cannot decode RGB frame {path['noise.jpg']}")}
    assert capfd.readouterr().err == ""
    depth = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    fmt.write_png(tmp_path / "depth.png", depth)
    assert np.array_equal(frames.read_depth(str(tmp_path / "depth.png")), depth)
    with pytest.raises(frames.FrameError, match=r"is uint8 with shape \(64, 80, 3\), expected a single-channel"):
        frames.read_depth(str(tmp_path / "9.jpg"))
    assert frames.jpeg_problem(b"\xff\xd8", b"...\xff\xd9\0\0", "x") is None  # zero padding after the end marker
    assert frames.jpeg_problem(b"\x89P", b"...", "x") is None  # not a JPEG: the decoder judges it
    for name in ("img0012.jpg", "img12.JPG", "img7.jpg", "img7.png", "notes.txt", "img.jpg"):
        (tmp_path / "clip").mkdir(exist_ok=True)
        (tmp_path / "clip" / name).write_bytes(b"")
    assert frames.frame_index(tmp_path / "clip", (".jpg",)) == {7: tmp_path / "clip" / "img7.jpg",
                                                                12: tmp_path / "clip" / "img0012.jpg"}
    assert frames.frame_index(tmp_path / "nowhere", (".jpg",)) == {}


def test_a_png_is_reused_only_when_whole(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    fmt.write_png(tmp_path / "a.png", image)
    data = (tmp_path / "a.png").read_bytes()
    idat = data.index(b"IDAT")
    crc = idat + 4 + struct.unpack(">I", data[idat - 4:idat])[0]
    variants = {"bad_crc.png": data[:crc] + bytes([data[crc] ^ 0xFF]) + data[crc + 1:], "cut.png": data[:-30],
                "empty.png": b""}
    for name, content in variants.items():
        (tmp_path / name).write_bytes(content)
    assert fmt.png_ok(tmp_path / "a.png", "RGB", 16)
    assert not fmt.png_ok(tmp_path / "a.png", "L") and not fmt.png_ok(tmp_path / "a.png", "RGB", 32)
    assert [fmt.png_ok(tmp_path / name, "RGB", 16) for name in variants] == [False, False, False]


def test_encoding_is_signed_around_mid_grey_and_the_grey_view_is_the_luma_difference() -> None:
    diff = np.array([-200.0, -3.0, -0.2, 0.0, 3.0, 200.0])
    assert fmt.encode_difference(diff, 2.0).tolist() == [0, 122, 128, 128, 134, 255]
    assert fmt.encode_difference(diff, 1.0).dtype == np.uint8
    assert fmt.encode_difference(np.array([-600.0, 1.0]), 64.0, bits=16).tolist() == [0, 32832]
    first = np.array([[500, 0, 510, 700]], np.uint16)
    second = np.array([[496, 480, 0, 702]], np.uint16)
    assert depth_difference(first, second).tolist() == [[-4.0, 0.0, 0.0, 2.0]]
    assert fmt.encode_difference(depth_difference(first, second), 16.0).tolist() == [[64, 128, 128, 160]]
    rgb = np.array([[[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0], [-100.0, -100.0, -100.0],
                     [100.0, 100.0, 100.0], [3.0, 3.0, 3.0]]])  # R, G, B
    # 128 + 2 * luma: 133.98, 139.74, 130.28, saturated low and high, 134 (weights sum to one)
    gray = fmt.encode_gray_difference(rgb)
    assert gray.dtype == np.uint8 and gray.tolist() == [[134, 140, 130, 0, 255, 134]]
    assert fmt.encode_gray_difference(rgb, 1.0).tolist() == [[131, 134, 129, 28, 228, 131]]


def test_boxes() -> None:
    assert crop.square_box((10, 20, 30, 40), 0.25, 100, 80) == (0, 10, 60, 60)
    assert crop.square_box((0, 0, 200, 100), 0.0, 100, 80) == (20, 0, 80, 80)
    assert crop.clip_box((-5, -5, 20, 20), 10, 10) == (0, 0, 10, 10)
    assert crop.clip_box((20, 20, 5, 5), 10, 10) is None
    assert crop.scale_box((10, 10, 20, 20), (100, 100), (50, 200)) == (5, 20, 10, 40)
    notes: list[tuple[str, str]] = []
    assert crop.face_box(np.full((64, 80, 3), 128, np.uint8), 0.2, notes, "f.jpg") == (0, 0, 80, 64)
    assert notes == [("no_face", "no face found in f.jpg: whole frame used")]


def test_loso_lists_hold_each_subject_once_as_test(tmp_path: Path) -> None:
    lists = tmp_path / "data"
    (lists / "v_rgb").mkdir(parents=True)
    (lists / "v_rgb" / "gone_test.txt").write_text("x 0 0\n")
    views = {"v_rgb": {"s2": ["b 1 0"], "s1": ["a 0 0", "c 0 0"]},
             "v_depth": {"s2": ["bd 1 0"], "s1": ["ad 0 0", "cd 0 0"]}}
    assert fmt.write_loso_lists(lists, views, ("neg", "pos")) == ["s2", "s1"]
    read = {str(p.relative_to(lists)): p.read_text() for p in sorted(lists.rglob("*.txt"))}
    assert read == {"classes.txt": "neg\npos\n", "v_depth/s1_test.txt": "ad 0 0\ncd 0 0\n",
                    "v_depth/s1_train.txt": "bd 1 0\n", "v_depth/s2_test.txt": "bd 1 0\n",
                    "v_depth/s2_train.txt": "ad 0 0\ncd 0 0\n", "v_rgb/s1_test.txt": "a 0 0\nc 0 0\n",
                    "v_rgb/s1_train.txt": "b 1 0\n", "v_rgb/s2_test.txt": "b 1 0\n",
                    "v_rgb/s2_train.txt": "a 0 0\nc 0 0\n", "v_rgb/subName.txt": "s2\ns1\n"}
    assert fmt.list_line("p.png", -1, 0.123456789) == "p.png -1 0 0.123457"
    assert fmt.list_line("p.png", 2, dbtype=3) == "p.png 2 3"
