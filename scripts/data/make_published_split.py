"""Write the published CAS(ME)^3 LOSO split into a list folder (the repository's `data/` by default).

Input: a CSV of the split with columns `key, subject, label, dbtype, rgb, depth, gray` (one row per
sample; paths relative to the data folder, in the published image layout). Output, in the list
format of `dataset.py`:

    v_rgb/<subject>_test.txt, v_depth/<subject>_test.txt, v_gray/<subject>_test.txt
    v_rgb/subName.txt      the subjects, one a line, in sorted order
    classes.txt            negative, others, positive, surprise (labels 0..3)

A subject's three lists hold its samples in one order, sorted by key. No `<subject>_train.txt` is
written: the published train list of a subject is the union of the other subjects' test lists, and
`dataset.load_split` derives it so (`dataset.derived_train`). `--check` compares instead of writing.

The list folder is claimed through its run record (`run.json`, `util.claim_folder`): a folder that
another tool wrote, or that lies in one (a prepared data folder's `data/`), is refused; so is one
written from another CSV unless `--overwrite`, which first removes what this tool wrote there (`OWNS`).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from collections import defaultdict
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import util  # noqa: E402
from dataset import (CLASS_LIST, DEFAULT_CLASS_NAMES, DEPTH_LISTS, GRAY_LISTS, LIST_FOLDER, RGB_LISTS,  # noqa: E402
                     SUBJECT_LIST, sample_key, split_list, subject_of)
from scripts.datatools.common.format import list_line, write_list  # noqa: E402
from scripts.datatools.common.sheets import cell_text, read_sheet  # noqa: E402
from util import REPO_ROOT, ArgumentParser, UserError, run_cli  # noqa: E402

TOOL = "make_published_split.py"
VIEWS = ((RGB_LISTS, "rgb"), (DEPTH_LISTS, "depth"), (GRAY_LISTS, "gray"))  # (list folder, CSV column)
OWNS = (RGB_LISTS, DEPTH_LISTS, GRAY_LISTS, CLASS_LIST)  # what --overwrite removes
COLUMNS = ("key", "subject", "label", "dbtype", "rgb", "depth", "gray")
CLASSES = DEFAULT_CLASS_NAMES[4]


def read_split(csv_path: Path) -> dict[str, list[dict[str, str]]]:
    """The CSV's rows by subject, each subject's rows sorted by key; every row checked (all seven
    cells filled, the three paths name the row's key, the key names the subject, the class folder
    matches the label)."""
    sheet = read_sheet(csv_path, COLUMNS)
    by_subject: dict[str, list[dict[str, str]]] = defaultdict(list)
    seen: set[str] = set()
    for line_no, cells in sheet.rows:
        where = f"{csv_path}:{line_no}"
        row = {column: cell_text(cells.get(column)) for column in COLUMNS}
        empty = [column for column, value in row.items() if not value]
        if empty:
            raise UserError(f"{where}: no {', '.join(empty)} (expected {len(COLUMNS)} cells: {','.join(COLUMNS)})")
        if not row["label"].isdigit() or int(row["label"]) >= len(CLASSES) or not row["dbtype"].isdigit():
            raise UserError(f"{where}: label {row['label']!r} / dbtype {row['dbtype']!r} out of range")
        keys = {sample_key(row[column]) for _, column in VIEWS}
        if keys != {f"{row['key']}_diff"} or subject_of(row["key"]) != row["subject"]:
            raise UserError(f"{where}: the paths, key {row['key']!r} and subject {row['subject']!r} disagree")
        if any(Path(row[column]).parent.name != CLASSES[int(row["label"])] for _, column in VIEWS):
            raise UserError(f"{where}: a path's class folder is not {CLASSES[int(row['label'])]!r}")
        if row["key"] in seen:
            raise UserError(f"{where}: sample {row['key']} listed twice")
        seen.add(row["key"])
        by_subject[row["subject"]].append(row)
    if not by_subject:
        raise UserError(f"{csv_path}: no samples")
    return {subject: sorted(rows, key=lambda r: r["key"]) for subject, rows in sorted(by_subject.items())}


def split_files(by_subject: dict[str, list[dict[str, str]]]) -> dict[str, list[str]]:
    """Every file of the list folder (path relative to it) -> its lines."""
    files = {f"{RGB_LISTS}/{SUBJECT_LIST}": list(by_subject), CLASS_LIST: list(CLASSES)}
    for subject, rows in by_subject.items():
        for folder, column in VIEWS:
            files[f"{folder}/{split_list(subject, 'test')}"] = [
                list_line(row[column], int(row["label"]), dbtype=int(row["dbtype"])) for row in rows]
    return files


def stale_lists(out: Path, files: dict[str, list[str]]) -> list[Path]:
    """Split lists under `out` that `files` does not hold (left by an earlier split)."""
    stale = []
    for folder, _ in VIEWS:
        for path in sorted((out / folder).glob("*.txt")):
            if path.name.endswith(("_train.txt", "_test.txt")) and f"{folder}/{path.name}" not in files:
                stale.append(path)
    return stale


def differing(out: Path, files: dict[str, list[str]]) -> list[str]:
    """The files of `files` that `out` lacks or holds with other bytes."""
    return [name for name, lines in files.items()
            if not (out / name).is_file() or (out / name).read_bytes() != "".join(f"{ln}\n" for ln in lines).encode()]


def build_parser() -> argparse.ArgumentParser:
    """The command line of `scripts/data/make_published_split.py`."""
    parser = ArgumentParser(description="Write the published CAS(ME)^3 LOSO split (test lists of 95 "
                                        "subjects in three views) from its CSV into a list folder.")
    parser.add_argument("--csv", required=True, help="the split as a CSV: key, subject, label, dbtype, rgb, depth, gray")
    parser.add_argument("--out", default=str(REPO_ROOT / LIST_FOLDER), help="list folder to write")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when the list folder differs from what the CSV gives")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace lists this script wrote into --out from another CSV")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with --check, compare) the lists; returns the number of differing files."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    by_subject = read_split(Path(args.csv))
    files = split_files(by_subject)
    if args.check:
        if not out.is_dir():
            raise UserError(f"{out}: list folder not found")
        differ, stale = differing(out, files), stale_lists(out, files)
        for name in differ:
            print(f"differs: {out / name}")
        for path in stale:
            print(f"not in the split: {path}")
        return len(differ) + len(stale)
    # the CSV's content, not its path, is what the lists come from (the repository's data/ records it too)
    csv_sha1 = hashlib.sha1(Path(args.csv).read_bytes()).hexdigest()
    record = util.claim_folder(out, TOOL, {"csv_sha1": csv_sha1}, OWNS, args.overwrite)
    record.start()
    differ, stale = differing(out, files), stale_lists(out, files)
    for name in differ:
        write_list(out / name, files[name])
    for path in stale:
        path.unlink()
    n_samples = sum(map(len, by_subject.values()))
    record.finish(samples=n_samples, subjects=len(by_subject))
    counts = [sum(int(r["label"]) == i for rows in by_subject.values() for r in rows) for i in range(len(CLASSES))]
    print(f"{n_samples} samples of {len(by_subject)} subjects ("
          + ", ".join(f"{c} {n}" for c, n in zip(CLASSES, counts)) + f"): {len(differ)} files written, "
          f"{len(stale)} stale lists removed under {out}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: sys.exit(1 if main() else 0))
