"""The published CAS(ME)^3 split in `data/` (written by `scripts/data/make_published_split.py`): counts,
train = all minus test (derived by `dataset.derived_train`), one key order per subject across the
three views, and a LOSO run that finds the lists with nothing but `--data_folder`."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import dataset
import util
from scripts.data import make_published_split as published
from scripts.datatools.common.format import write_png
from helpers import fails

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
SPLIT_CSV = Path("/work/shared/reference/casme3_published_split.csv")
VIEWS = ("v_rgb", "v_depth", "v_gray")
LABEL_COUNTS = {0: 508, 1: 170, 2: 64, 3: 201}


def read_lines(path: Path) -> list[tuple[str, int, int]]:
    """(path, label, dbtype) of every line; the file is LF-terminated text."""
    raw = path.read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n"), path
    rows = []
    for line in raw.decode().splitlines():
        rel, label, dbtype = line.split(" ")
        rows.append((rel, int(label), int(dbtype)))
    return rows


def subjects() -> list[str]:
    return dataset.subject_names(DATA)


def test_counts_and_format() -> None:
    names = subjects()
    assert len(names) == 95 == len(set(names)) and names == sorted(names)
    assert (DATA / "classes.txt").read_text().split() == list(dataset.DEFAULT_CLASS_NAMES[4])
    labels: Counter[int] = Counter()
    keys: set[str] = set()
    for subject in names:
        rows = read_lines(DATA / "v_rgb" / f"{subject}_test.txt")
        for rel, label, dbtype in rows:
            assert not Path(rel).is_absolute() and dbtype == dataset.DBTYPE_CASME3
            assert dataset.subject_of(dataset.sample_key(rel)) == subject
            keys.add(dataset.sample_key(rel))
        labels.update(label for _, label, _ in rows)
    assert len(keys) == sum(labels.values()) == 943
    assert dict(labels) == LABEL_COUNTS
    for view in VIEWS:  # test lists only: train lists are derived
        assert sorted(p.name for p in (DATA / view).glob("*_t*.txt")) == sorted(f"{s}_test.txt" for s in names)


def test_three_views_share_one_key_order() -> None:
    for subject in subjects():
        rgb, depth, gray = (read_lines(DATA / view / f"{subject}_test.txt") for view in VIEWS)
        assert [dataset.sample_key(p) for p, *_ in rgb] == [dataset.sample_key(p) for p, *_ in depth] \
            == [dataset.sample_key(p) for p, *_ in gray]
        assert [r[1:] for r in rgb] == [r[1:] for r in depth] == [r[1:] for r in gray]
        assert all("_diff_depth.png" in p for p, *_ in depth) and all("_diff_gray.png" in p for p, *_ in gray)


@pytest.mark.skipif(not SPLIT_CSV.is_file(), reason="the split CSV is not on this machine")
def test_lists_are_reproduced_from_the_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert published.main(["--csv", str(SPLIT_CSV), "--check"]) == 0
    out = tmp_path / "lists"
    assert published.main(["--csv", str(SPLIT_CSV), "--out", str(out)]) == 0
    assert "943 samples of 95 subjects" in capsys.readouterr().out
    written = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and p.name != "run.json")
    shipped = sorted(p.relative_to(DATA) for p in DATA.rglob("*") if p.is_file() and p.suffix == ".txt")
    assert written == shipped
    assert all((out / p).read_bytes() == (DATA / p).read_bytes() for p in written)
    stale = out / "v_depth" / "spNO999_train.txt"  # a list of an earlier split, in a folder this tool wrote
    stale.write_text("x 0 0\n")
    assert published.main(["--csv", str(SPLIT_CSV), "--out", str(out), "--check"]) == 1
    assert capsys.readouterr().out == f"not in the split: {stale}\n"
    assert published.main(["--csv", str(SPLIT_CSV), "--out", str(out)]) == 0
    assert not stale.exists() and "0 files written, 1 stale lists removed" in capsys.readouterr().out


SPLIT_HEADER = "key,subject,label,dbtype,rgb,depth,gray\n"
ROW = ("spNO.1-a-9-spNO.1-a-5,{subject},0,0,x/negative/spNO.1-a-9-spNO.1-a-5_diff.png,"
       "y/negative/spNO.1-a-9-spNO.1-a-5_diff_depth.png,z/negative/spNO.1-a-9-spNO.1-a-5_diff_gray.png")


@pytest.mark.parametrize("content, flags, message", [
    (SPLIT_HEADER + ROW.format(subject="spNO2"), [],
     "split.csv:2: the paths, key 'spNO.1-a-9-spNO.1-a-5' and subject 'spNO2' disagree"),
    (SPLIT_HEADER + ROW.format(subject="spNO1") + "\n" + ROW.format(subject="spNO1").replace("a-5", "a-\xe9"), [],
     "split.csv:3: byte 0xe9 is not UTF-8 (save the file as UTF-8)"),
    (SPLIT_HEADER + "spNO.1-a-9-spNO.1-a-5,spNO1,0", [],
     "split.csv:2: no dbtype, rgb, depth, gray (expected 7 cells: key,subject,label,dbtype,rgb,depth,gray)"),
    ("key,subject,label", [], "split.csv: no header row with the columns key, subject, label, dbtype, rgb, depth, "
                              "gray in the first 40 rows (closest: row 1, without 'dbtype', 'rgb', 'depth', 'gray')"),
    (SPLIT_HEADER + ROW.format(subject="spNO1"), ["--check"], "out: list folder not found"),
])
def test_a_bad_csv_or_folder_is_one_error_line_and_nothing_is_written(
        tmp_path: Path, content: str, flags: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "split.csv"
    bad.write_bytes(f"{content}\n".encode("latin-1"))
    line = fails(published.main, ["--csv", str(bad), "--out", str(tmp_path / "out"), *flags], capsys)
    assert line == f"error: {tmp_path / message}"
    assert sorted(tmp_path.iterdir()) == [bad]


# ---------------------------------------------------------------------------------------------
# Reading the shipped lists over a fake image tree in the published layout


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny PNGs at every path of the shipped lists (RGB 8x8x3, depth and grey 8x8), under a data
    folder without its own `data/`, so the repository's `data/` is the list folder."""
    root = tmp_path_factory.mktemp("published") / "casme3"
    rng = np.random.default_rng(0)
    for subject in subjects():
        for view in VIEWS:
            for rel, label, _ in read_lines(DATA / view / f"{subject}_test.txt"):
                shape = (8, 8, 3) if view == "v_rgb" else (8, 8)
                image = np.clip(rng.normal(128 + 20 * label, 10, shape), 0, 255).astype(np.uint8)
                write_png(root / rel, image)
    return root


def test_train_is_all_other_subjects(image_tree: Path) -> None:
    """Test lists are disjoint (test_counts_and_format), so deriving each train list as the other
    subjects' test lists gives all minus the subject's test; checked here on the first, a
    single-sample and the last subject through the real reader."""
    assert dataset.find_list_folder(image_tree) == DATA
    names = subjects()
    tests = {s: dataset.load_split(DATA, image_tree, s, "test") for s in names}
    everything = {sample.key for samples in tests.values() for sample in samples}
    single = next(s for s in names if len(tests[s]) == 1)
    for subject in (names[0], single, names[-1]):
        train = dataset.load_split(DATA, image_tree, subject, "train")
        keys = [s.key for s in train]
        assert len(keys) == len(set(keys)) == 943 - len(tests[subject])
        assert set(keys) == everything - {s.key for s in tests[subject]}
        assert all(s.subject != subject and s.subject == dataset.subject_of(s.key) for s in train)


def test_loso_runs_on_the_shipped_lists(image_tree: Path, tmp_path: Path) -> None:
    finetune = util.load_script("fine-tune_CVSCL.py")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared machine run fastest on one thread
    try:  # frozen: features are extracted once, and the run is about finding the lists
        results = finetune.main(["--data_folder", str(image_tree), "--model_path", "none",
                                 "--save_path", str(tmp_path / "runs"), "--subjects", "spNO1,spNO10",
                                 "--epochs", "1", "--image_size", "64", "--num_workers", "0", "--no_progress",
                                 "--freeze_encoder"])
    finally:
        torch.set_num_threads(threads)
    assert set(results["per_subject"]) == {"spNO1", "spNO10"}
    (run,) = [p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file()]
    for subject in ("spNO1", "spNO10"):
        record = json.loads((run / "units" / "seed0" / f"{subject}.json").read_text())
        n_test = len(read_lines(DATA / "v_rgb" / f"{subject}_test.txt"))
        assert (record["n_train"], record["n_test"]) == (943 - n_test, n_test)
