"""Prepare a licensed CAS(ME)^3 release for DVSCL (`scripts/prepare_casme3.py`).

Input: the Part A root (`RGB/<Subject>/<Filename>/color/<frame>.jpg`,
`depth/<Subject>/<Filename>[/depth]/<frame>.png`, 16-bit, 0 = no measurement), the ME annotation
(`.xlsx` sheet `label`, `.xls` or `.csv` with columns Subject, Filename, Onset, Apex, Offset,
emotion) and optionally the Part B root (same layout, unlabeled).

Output, all under `--out` (never inside an input tree), paths in lists relative to it:

    casme3_diff_me<K>/casme3_diff_imgs_all/<class>/<key>.png         RGB difference, 8-bit, 3 channels
    casme3_diff_me<K>/casme3_diff_depth_all/<class>/<key>_depth.png  depth difference, 8-bit, 1 channel
    casme3_pool/rgb/<subject>/<key>.png, casme3_pool/depth/<subject>/<key>_depth.png  unlabeled pairs
    data/v_rgb|v_depth/spNO<n>_train.txt, spNO<n>_test.txt, pretrain.txt; data/v_rgb/subName.txt;
    data/classes.txt
    prepare_report.{txt,json}, class_counts.csv, report_items.csv, intensity_labeled.csv,
    intensity_pool.csv, intensity_histogram.png (with --calibrate)

`<key>` is `spNO.<n>-<video>-<second frame>-spNO.<n>-<video>-<first frame>_diff` (second = apex,
first = onset for MEs); K is the number of classes. The encoding is in `casme3_images.py`.
Per-pair measures are cached in `.prepare_cache/` so a re-run skips pairs already written.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import multiprocessing
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

import casme3_images as ci
from util import UserError, atomic_write_json, atomic_write_text

EMOTION_TO_CLASS = {"disgust": "negative", "fear": "negative", "anger": "negative", "sad": "negative",
                    "happy": "positive", "surprise": "surprise", "others": "others"}
CLASSES = {4: ("negative", "others", "positive", "surprise"), 3: ("negative", "positive", "surprise")}
ME_COLUMNS = ("Subject", "Filename", "Onset", "Apex", "Offset", "emotion")
INTERVAL_COLUMNS = ("Subject", "Filename", "Onset")
BOX_COLUMNS = ("Subject", "Filename", "x", "y", "w", "h")
LIST_FOLDER = "data"
POOL_FOLDER = "casme3_pool"
CACHE_FOLDER = ".prepare_cache"
DBTYPE = 0
_SUBJECT = re.compile(r"^sp\s*no\.?\s*0*(\d+)$", re.IGNORECASE)
_FRAME = re.compile(r"(\d+)$")
_CLASS_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_SUBJECT_LIST = re.compile(r"^spNO\d+_(train|test)\.txt$")


# ---------------------------------------------------------------------------------------------
# Names


def parse_subject(value: object) -> int | None:
    """Subject number of `spNO.12`, `spNo.12`, `spNO12`, `12` or 12; None if not a subject."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value) if float(value).is_integer() and value >= 0 else None
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    match = _SUBJECT.match(text)
    return int(match.group(1)) if match else None


def file_subject(n: int) -> str:
    """Subject as spelled in file names: `spNO.<n>`."""
    return f"spNO.{n}"


def list_subject(n: int) -> str:
    """Subject as spelled in list names and subName.txt: `spNO<n>`."""
    return f"spNO{n}"


def pair_key(n: int, video: str, first: int, second: int) -> str:
    """`spNO.<n>-<video>-<second>-spNO.<n>-<video>-<first>_diff` (the published naming)."""
    subject = file_subject(n)
    return f"{subject}-{video}-{second}-{subject}-{video}-{first}_diff"


# ---------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class ReportItem:
    """One reported row: category 'skipped', 'excluded' or 'anomaly'; `source` names the file/row."""
    category: str
    kind: str
    source: str
    detail: str


class Report:
    """What was skipped, excluded or unusual: itemized for labeled MEs and single folders, counted
    (with a first example) for pool pairs and layout variants that repeat for every video."""

    def __init__(self) -> None:
        self.items: list[ReportItem] = []
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def add(self, category: str, kind: str, source: str, detail: str) -> None:
        self.items.append(ReportItem(category, kind, source, detail))

    def count(self, kind: str, detail: str, n: int = 1) -> None:
        """Count `n` occurrences of `kind`, remembering the first example."""
        self.counts[kind] += n
        self.examples.setdefault(kind, detail)

    def kinds(self, category: str) -> Counter[str]:
        return Counter(item.kind for item in self.items if item.category == category)

    def first(self, category: str) -> ReportItem | None:
        return next((item for item in self.items if item.category == category), None)


# ---------------------------------------------------------------------------------------------
# Tables: annotation, exclusion intervals, boxes


@dataclass
class Table:
    """Rows of a spreadsheet or CSV keyed by normalised column name (stripped, lower case)."""
    path: Path
    sheet: str | None
    headers: list[str]
    rows: list[tuple[int, dict[str, object]]]

    @property
    def name(self) -> str:
        return f"{self.path}" + (f" (sheet {self.sheet!r})" if self.sheet else "")

    def require(self, columns: Iterable[str]) -> None:
        """UserError naming the first missing column."""
        present = {_norm(h) for h in self.headers}
        for column in columns:
            if _norm(column) not in present:
                raise UserError(f"{self.name}: no column {column!r} (columns: "
                                f"{', '.join(h for h in self.headers if h)})")

    def source(self, row_no: int) -> str:
        return f"{self.path.name} row {row_no}"


def _norm(header: object) -> str:
    return " ".join(str(header).split()).lower() if header is not None else ""


def read_table(path: str | Path, sheet: str | None = None) -> Table:
    """Read `.xlsx` (openpyxl; sheet `sheet`, else 'label', else the only sheet), `.xls` (xlrd) or
    `.csv`. The first non-empty row is the header; empty rows are left out; row numbers are the
    spreadsheet's (header = its own row number)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        sheet_name, raw = _read_xlsx(path, sheet)
    elif suffix == ".xls":
        sheet_name, raw = _read_xls(path, sheet)
    elif suffix == ".csv":
        sheet_name, raw = None, _read_csv(path)
    else:
        raise UserError(f"{path}: unsupported annotation format {suffix!r} (use .xlsx, .xls or .csv)")
    numbered = [(i, row) for i, row in enumerate(raw, start=1) if any(_filled(v) for v in row)]
    if not numbered:
        raise UserError(f"{path}: no rows")
    header_no, header = numbered[0]
    headers = [str(h).strip() if h is not None else "" for h in header]
    keys = [_norm(h) for h in headers]
    rows = [(i, {k: (row[j] if j < len(row) else None) for j, k in enumerate(keys) if k})
            for i, row in numbered[1:]]
    return Table(path, sheet_name, headers, rows)


def _filled(value: object) -> bool:
    return value is not None and str(value).strip() != ""


def _pick_sheet(path: Path, names: list[str], sheet: str | None) -> str:
    if sheet is not None:
        if sheet not in names:
            raise UserError(f"{path}: no sheet {sheet!r} (sheets: {', '.join(names)})")
        return sheet
    if "label" in names:
        return "label"
    if len(names) == 1:
        return names[0]
    raise UserError(f"{path}: no sheet 'label' (sheets: {', '.join(names)}); choose one with --sheet")


def _read_xlsx(path: Path, sheet: str | None) -> tuple[str, list[tuple]]:
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises several unrelated types for bad files
        raise UserError(f"{path}: cannot read the workbook ({type(err).__name__}: {err})") from None
    try:
        name = _pick_sheet(path, book.sheetnames, sheet)
        return name, [tuple(row) for row in book[name].iter_rows(values_only=True)]
    finally:
        book.close()


def _read_xls(path: Path, sheet: str | None) -> tuple[str, list[tuple]]:
    import xlrd

    try:
        book = xlrd.open_workbook(str(path))
    except Exception as err:  # xlrd raises XLRDError, CompDocError, struct errors
        raise UserError(f"{path}: cannot read the workbook ({type(err).__name__}: {err})") from None
    name = _pick_sheet(path, book.sheet_names(), sheet)
    table = book.sheet_by_name(name)
    return name, [tuple(table.row_values(i)) for i in range(table.nrows)]


def _read_csv(path: Path) -> list[tuple]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return [tuple(row) for row in csv.reader(handle)]


def cell_int(value: object) -> int | None:
    """A frame number from a cell (int, integral float or digits); None when empty.

    Raises ValueError for anything else.
    """
    if not _filled(value):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if float(value).is_integer():
            return int(value)
        raise ValueError(value)
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError(value) from None
    if not number.is_integer():
        raise ValueError(value)
    return int(number)


@dataclass(frozen=True)
class AnnotatedRow:
    """One annotation row (`row_no` in the sheet). `apex`/`emotion` are None in exclusion-only files."""
    source: str
    row_no: int
    subject: int
    video: str
    onset: int
    apex: int | None
    offset: int | None
    emotion: str | None

    @property
    def end(self) -> int:
        """Last annotated frame: the largest of onset, apex and offset."""
        return max(v for v in (self.onset, self.apex, self.offset) if v is not None)


def parse_rows(table: Table, report: Report, labeled: bool) -> list[AnnotatedRow]:
    """Validate annotation rows; unusable rows are reported as skipped, oddities as anomalies.

    `labeled=True` needs Subject, Filename, Onset, Apex, Offset, emotion (the ME annotation);
    `labeled=False` needs Subject, Filename, Onset (intervals excluded from the pool).
    """
    table.require(ME_COLUMNS if labeled else INTERVAL_COLUMNS)
    parsed = []
    for row_no, values in table.rows:
        source = table.source(row_no)
        subject_cell, video_cell = values.get("subject"), values.get("filename")
        subject = parse_subject(subject_cell) if _filled(subject_cell) else None
        if subject is None:
            report.add("skipped", "bad_row", source, f"Subject {subject_cell!r} is not spNO.<n>")
            continue
        if isinstance(subject_cell, str) and subject_cell.strip() != file_subject(subject):
            report.add("anomaly", "subject_spelling", source,
                       f"Subject {subject_cell!r} read as {file_subject(subject)}")
        video = str(video_cell).strip() if _filled(video_cell) else ""
        if not video or "-" in video or "/" in video:
            report.add("skipped", "bad_row", source, f"Filename {video_cell!r} is not a task letter")
            continue
        if video != video.lower():
            report.add("anomaly", "uppercase_task", source, f"Filename {video!r} read as {video.lower()!r}")
            video = video.lower()
        try:
            onset, apex, offset = (cell_int(values.get(c)) for c in ("onset", "apex", "offset"))
        except ValueError as err:
            report.add("skipped", "bad_row", source, f"frame number {err.args[0]!r} is not an integer")
            continue
        emotion_cell = values.get("emotion")
        emotion = str(emotion_cell).strip().lower() if _filled(emotion_cell) else None
        missing = [name for name, v in (("Onset", onset), ("Apex", apex), ("emotion", emotion))
                   if v is None and (labeled or name == "Onset")]
        if missing:
            report.add("skipped", "bad_row", source, f"empty {', '.join(missing)}")
            continue
        if labeled and (offset is None or offset < apex):
            problem = "Offset is empty" if offset is None else f"Offset {offset} is before Apex {apex}"
            report.add("anomaly", "offset", source,
                       f"{problem}: the interval kept out of the pool ends at Apex {apex}")
        parsed.append(AnnotatedRow(source, row_no, subject, video, onset, apex, offset, emotion))
    return parsed


def read_boxes(path: str | Path) -> dict[tuple[int, str], ci.Box]:
    """Face boxes per video from a CSV with columns Subject, Filename, x, y, w, h (RGB pixels)."""
    table = read_table(path)
    table.require(BOX_COLUMNS)
    boxes: dict[tuple[int, str], ci.Box] = {}
    for row_no, values in table.rows:
        where = f"{table.path}:{row_no}"
        subject = parse_subject(values.get("subject"))
        video = str(values.get("filename") or "").strip().lower()
        try:
            box = tuple(cell_int(values.get(c)) for c in "xywh")
        except ValueError as err:
            raise UserError(f"{where}: {err.args[0]!r} is not an integer") from None
        if subject is None or not video or None in box or box[2] <= 0 or box[3] <= 0:
            raise UserError(f"{where}: expected Subject, Filename and a box x, y, w > 0, h > 0")
        boxes[(subject, video)] = box
    return boxes


# ---------------------------------------------------------------------------------------------
# Class mapping


@dataclass(frozen=True)
class ClassMap:
    """Emotion -> label. `labels[emotion]` is None for an emotion left out (e.g. 'others' in 3 classes)."""
    classes: tuple[str, ...]
    labels: dict[str, int | None]


def builtin_class_map(n_classes: int) -> ClassMap:
    """CAS(ME)^3 mapping: 4 classes (negative, others, positive, surprise) or 3 (without others)."""
    classes = CLASSES[n_classes]
    labels = {e: (classes.index(c) if c in classes else None) for e, c in EMOTION_TO_CLASS.items()}
    return ClassMap(classes, labels)


def read_class_map(path: str | Path) -> ClassMap:
    """A mapping file: lines `<emotion> <class>` (space or comma), `#` comments, class `-` drops
    the emotion. Labels follow the order in which classes first appear."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: class mapping file not found")
    classes: list[str] = []
    labels: dict[str, int | None] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].replace(",", " ").split()
        if not text:
            continue
        if len(text) != 2:
            raise UserError(f"{path}:{line_no}: expected '<emotion> <class>', got {line.strip()!r}")
        emotion, name = text[0].lower(), text[1]
        if emotion in labels:
            raise UserError(f"{path}:{line_no}: emotion {emotion!r} mapped twice")
        if name == "-":
            labels[emotion] = None
            continue
        if not _CLASS_NAME.match(name):
            raise UserError(f"{path}:{line_no}: class name {name!r} must be letters, digits, _ . + -")
        if name not in classes:
            classes.append(name)
        labels[emotion] = classes.index(name)
    if not classes:
        raise UserError(f"{path}: no classes")
    return ClassMap(tuple(classes), labels)


# ---------------------------------------------------------------------------------------------
# Source tree


@dataclass(frozen=True)
class VideoFrames:
    """Frame files of one video: index -> path, per view."""
    rgb: dict[int, Path]
    depth: dict[int, Path]


def _child_dir(folder: Path, name: str) -> Path:
    """`folder/name`, matched case-insensitively; UserError naming the expected path."""
    exact = folder / name
    if exact.is_dir():
        return exact
    for child in sorted(folder.iterdir()):
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    raise UserError(f"{exact}: folder not found")


def _frame_index(folder: Path, suffix: str) -> dict[int, Path]:
    """Files `<...><number><suffix>` in `folder` by number."""
    frames = {}
    for entry in os.scandir(folder):
        if entry.is_file() and entry.name.lower().endswith(suffix):
            match = _FRAME.search(entry.name[: -len(suffix)])
            if match:
                frames[int(match.group(1))] = Path(entry.path)
    return frames


class SourceTree:
    """One release part: `RGB/<Subject>/<video>/color/` and `depth/<Subject>/<video>[/depth]/`.

    Subject folders are matched by number (`spNO.1`, `spNo.1` and `spNO1` are subject 1) and video
    folders case-insensitively; unusual spellings are reported once.
    """

    def __init__(self, root: Path, part: str, report: Report) -> None:
        self.root, self.part, self.report = root, part, report
        self.rgb_top = _child_dir(root, "RGB")
        self.depth_top = _child_dir(root, "depth")
        self.rgb_subjects = self._subjects(self.rgb_top)
        self.depth_subjects = self._subjects(self.depth_top)
        self._frames: dict[tuple[int, str], VideoFrames] = {}

    def _subjects(self, top: Path) -> dict[int, Path]:
        found: dict[int, Path] = {}
        for folder in sorted(p for p in top.iterdir() if p.is_dir()):
            n = parse_subject(folder.name)
            if n is None:
                self.report.add("anomaly", "unknown_folder", str(folder),
                                "not a spNO.<n> subject folder: ignored")
            elif n in found:
                self.report.add("anomaly", "duplicate_folder", str(folder),
                                f"subject {file_subject(n)} also in {found[n]}: ignored")
            else:
                found[n] = folder
                if folder.name != file_subject(n):
                    self.report.add("anomaly", "folder_spelling", str(folder),
                                    f"folder {folder.name!r} used for {file_subject(n)}")
        return found

    def subjects(self) -> list[int]:
        return sorted(self.rgb_subjects)

    def videos(self, n: int) -> list[str]:
        """Lower-case video names of subject `n` (RGB side)."""
        return sorted({p.name.lower() for p in self.rgb_subjects[n].iterdir() if p.is_dir()})

    def frames(self, n: int, video: str) -> VideoFrames | str:
        """The video's frames, or a reason naming what is missing."""
        if (n, video) in self._frames:
            return self._frames[(n, video)]
        folders = []
        for view, subjects, top, inner in (("RGB", self.rgb_subjects, self.rgb_top, "color"),
                                            ("depth", self.depth_subjects, self.depth_top, "depth")):
            if n not in subjects:
                return f"no {view} folder for {file_subject(n)} in {top}"
            video_dir = next((p for p in sorted(subjects[n].iterdir())
                              if p.is_dir() and p.name.lower() == video), None)
            if video_dir is None:
                return f"no {view} video folder {video!r} in {subjects[n]}"
            if video_dir.name != video:
                self.report.add("anomaly", "uppercase_task", str(video_dir), f"video folder read as {video!r}")
            frame_dir = video_dir / inner
            if not frame_dir.is_dir():
                frame_dir = video_dir
                self.report.count(f"no_inner_{inner}_folder", f"{video_dir}: no {inner}/ folder, frames "
                                                              f"read from the video folder")
            folders.append(frame_dir)
        found = VideoFrames(_frame_index(folders[0], ".jpg"), _frame_index(folders[1], ".png"))
        self._frames[(n, video)] = found
        return found

    def frame_paths(self, n: int, video: str, first: int, second: int) -> tuple[Path, Path, Path, Path] | str:
        """RGB and depth paths of two frames, or a reason naming the missing folder or frame."""
        found = self.frames(n, video)
        if isinstance(found, str):
            return found
        for view, index in (("RGB", found.rgb), ("depth", found.depth)):
            for frame in (first, second):
                if frame not in index:
                    folder = f"{self.part} {view} {file_subject(n)}/{video}"
                    return f"{view} frame {frame} missing in {folder} ({len(index)} frames" + (
                        f", {min(index)}-{max(index)})" if index else ")")
        return found.rgb[first], found.rgb[second], found.depth[first], found.depth[second]


# ---------------------------------------------------------------------------------------------
# OpenFace AU tables


def read_au_csv(path: Path) -> dict[int, np.ndarray]:
    """OpenFace-style CSV: `frame` -> vector of the `AUxx_r` columns (rows with success 0 left out)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        lower = [h.lower() for h in header]
        if "frame" not in lower:
            raise UserError(f"{path}: no column 'frame'")
        au_columns = [i for i, h in enumerate(header) if re.fullmatch(r"AU\d+_r", h, re.IGNORECASE)]
        if not au_columns:
            raise UserError(f"{path}: no AUxx_r intensity columns")
        frame_col = lower.index("frame")
        success_col = lower.index("success") if "success" in lower else None
        table = {}
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                if success_col is not None and float(row[success_col]) == 0:
                    continue
                table[int(float(row[frame_col]))] = np.array([float(row[i]) for i in au_columns])
            except (ValueError, IndexError):
                raise UserError(f"{path}:{line_no}: expected numbers in frame and AU columns") from None
    return table


class AuTables:
    """AU intensity change between frames, from `<au_dir>/<Subject>/<Filename>.csv`."""

    def __init__(self, au_dir: Path) -> None:
        self.files: dict[tuple[int, str], Path] = {}
        for folder in sorted(p for p in au_dir.iterdir() if p.is_dir()):
            n = parse_subject(folder.name)
            if n is not None:
                for path in sorted(folder.glob("*.csv")):
                    self.files[(n, path.stem.lower())] = path
        self._tables: dict[tuple[int, str], dict[int, np.ndarray]] = {}

    def change(self, n: int, video: str, first: int, second: int) -> float | None:
        """max over AUs of |AU(second) - AU(first)|; None without a CSV or without both frames."""
        if (n, video) not in self.files:
            return None
        if (n, video) not in self._tables:
            self._tables[(n, video)] = read_au_csv(self.files[(n, video)])
        table = self._tables[(n, video)]
        if first not in table or second not in table:
            return None
        return float(np.max(np.abs(table[second] - table[first])))


# ---------------------------------------------------------------------------------------------
# Per-pair cache and the worker pool


class PairCache:
    """Measures of pairs already processed, one JSON line per pair, appended as results arrive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interrupted run
                self.entries[entry["key"]] = entry

    def record(self, result: ci.PairResult) -> None:
        entry = {"key": result.key, "mad": result.mad, "flow": result.flow}
        self.entries[result.key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")


def _image_ok(path: str, mode: str, size: int) -> bool:
    """The file opens as a PNG of `mode` (and `size` x `size` when size > 0)."""
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.mode == mode and (not size or image.size == (size, size))
    except (OSError, ValueError):
        return False


def reuse(task: ci.PairTask, entry: dict | None) -> ci.PairResult | None:
    """The cached outcome of `task`, or None when it must be (re)computed."""
    if entry is None:
        return None
    intensity = ci.intensity_of(task.measure, entry["mad"], entry["flow"], task.au_change)
    if ci.below(intensity, task.min_intensity):
        return ci.PairResult(task.key, "dropped", entry["mad"], entry["flow"])
    size = task.settings.image_size
    if _image_ok(task.rgb_out, "RGB", size) and _image_ok(task.depth_out, "L", size):
        return ci.PairResult(task.key, "reused", entry["mad"], entry["flow"])
    return None


def run_pairs(tasks: Sequence[ci.PairTask], cache: PairCache, workers: int,
              desc: str) -> dict[str, ci.PairResult]:
    """Process `tasks` (reusing cached pairs) with `workers` processes; results by key."""
    results: dict[str, ci.PairResult] = {}
    todo = []
    for task in tasks:
        cached = reuse(task, cache.entries.get(task.key))
        if cached is None:
            todo.append(task)
        else:
            results[task.key] = cached
    bar = tqdm(total=len(tasks), initial=len(results), desc=desc, unit="pair")
    for result in _imap(todo, workers):
        if result.status in ("written", "dropped"):
            cache.record(result)
        results[result.key] = result
        bar.update()
    bar.close()
    return results


def _imap(tasks: list[ci.PairTask], workers: int) -> Iterator[ci.PairResult]:
    if workers <= 1 or len(tasks) < 2:
        yield from map(ci.process_pair, tasks)
        return
    context = multiprocessing.get_context("spawn")
    chunk = max(1, min(16, len(tasks) // (4 * workers)))
    with context.Pool(workers, initializer=ci.init_worker) as pool:
        yield from pool.imap_unordered(ci.process_pair, tasks, chunksize=chunk)


# ---------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True)
class LabeledPair:
    """A labeled ME to write: its annotation row, class and task."""
    row: AnnotatedRow
    label: int
    class_name: str
    task: ci.PairTask


@dataclass(frozen=True)
class PoolPair:
    """An unlabeled pair of the pre-training pool."""
    subject: int
    video: str
    first: int
    second: int
    au: float | None
    task: ci.PairTask


@dataclass
class Context:
    """Resolved inputs shared by the planning steps."""
    out: Path
    settings: ci.ImageSettings
    class_map: ClassMap
    image_folder: str
    report: Report
    boxes: dict[tuple[int, str], ci.Box] | None
    au: AuTables | None
    measure: str
    keep_zero_gap: bool


def plan_labeled(rows: Sequence[AnnotatedRow], tree: SourceTree, ctx: Context) -> list[LabeledPair]:
    """One task per usable ME; every row left out is reported with its reason."""
    report = ctx.report
    per_video: dict[tuple[int, str], list[AnnotatedRow]] = defaultdict(list)
    for row in rows:
        per_video[(row.subject, row.video)].append(row)
    for (n, video), group in sorted(per_video.items()):
        if len(group) > 1:
            report.add("anomaly", "several_mes", f"{file_subject(n)}/{video}",
                       f"{len(group)} MEs in one video (rows {', '.join(str(r.row_no) for r in group)})")
    seen: dict[tuple[int, str, int, int], AnnotatedRow] = {}
    planned = []
    for row in rows:
        if row.emotion not in ctx.class_map.labels:
            report.add("skipped", "unknown_emotion", row.source,
                       f"emotion {row.emotion!r} is not in the class mapping")
            continue
        label = ctx.class_map.labels[row.emotion]
        if label is None:
            report.add("excluded", "class_map", row.source,
                       f"emotion {row.emotion!r} left out by the class mapping")
            continue
        identity = (row.subject, row.video, row.onset, row.apex)
        if identity in seen:
            first = seen[identity]
            same = "same emotion" if first.emotion == row.emotion else f"emotion {first.emotion!r} there"
            report.add("skipped", "duplicate", row.source,
                       f"same subject, video, onset and apex as {first.source} ({same})")
            continue
        seen[identity] = row
        if row.apex == row.onset:
            detail = f"Apex == Onset == {row.onset}: all-zero difference"
            if not ctx.keep_zero_gap:
                report.add("skipped", "apex_equals_onset", row.source, detail + " (--keep_zero_gap keeps it)")
                continue
            report.add("anomaly", "apex_equals_onset", row.source, detail + ": kept")
        if row.apex < row.onset:
            report.add("skipped", "apex_before_onset", row.source, f"Apex {row.apex} before Onset {row.onset}")
            continue
        paths = tree.frame_paths(row.subject, row.video, row.onset, row.apex)
        if isinstance(paths, str):
            kind = "missing_frame" if " frame " in paths else "missing_folder"
            report.add("skipped", kind, row.source, paths)
            continue
        box = None
        if ctx.boxes is not None:
            box = ctx.boxes.get((row.subject, row.video))
            if box is None:
                report.add("skipped", "no_box", row.source,
                           f"no box for {file_subject(row.subject)}/{row.video} in the box file")
                continue
        class_name = ctx.class_map.classes[label]
        key = pair_key(row.subject, row.video, row.onset, row.apex)
        base = ctx.out / ctx.image_folder
        au = ctx.au.change(row.subject, row.video, row.onset, row.apex) if ctx.au else None
        task = ci.PairTask(key, *map(str, paths),
                           rgb_out=str(base / "casme3_diff_imgs_all" / class_name / f"{key}.png"),
                           depth_out=str(base / "casme3_diff_depth_all" / class_name / f"{key}_depth.png"),
                           settings=ctx.settings, box=box, measure=ctx.measure, au_change=au)
        planned.append(LabeledPair(row, label, class_name, task))
    return planned


def pool_pairs(frames: Iterable[int], gap: int, stride: int,
               intervals: Sequence[tuple[int, int]]) -> tuple[list[tuple[int, int]], int]:
    """Pairs (f, f + gap) for f = first frame, + stride, ... with both frames present and no
    overlap with an annotated interval [start, end]; also the number of pairs missing a frame."""
    present = set(frames)
    if not present:
        return [], 0
    pairs, missing = [], 0
    for first in range(min(present), max(present) - gap + 1, stride):
        second = first + gap
        if any(first <= end and second >= start for start, end in intervals):
            continue
        if first in present and second in present:
            pairs.append((first, second))
        else:
            missing += 1
    return pairs, missing


def plan_pool(trees: Sequence[SourceTree], intervals: dict[tuple[int, str], list[tuple[int, int]]],
              ctx: Context, gap: int, stride: int, threshold: float | None) -> list[PoolPair]:
    """Unlabeled pairs from every video of the given parts, outside the annotated intervals."""
    planned: list[PoolPair] = []
    owner: dict[tuple[int, str], str] = {}
    for tree in trees:
        for n in tree.subjects():
            for video in tree.videos(n):
                if (n, video) in owner:
                    ctx.report.count("duplicate_video", f"{tree.part} {file_subject(n)}/{video} also in "
                                                        f"{owner[(n, video)]}: left out")
                    continue
                owner[(n, video)] = tree.part
                planned += _plan_video(tree, n, video, intervals.get((n, video), []), ctx, gap, stride,
                                       threshold)
    return planned


def _plan_video(tree: SourceTree, n: int, video: str, intervals: Sequence[tuple[int, int]], ctx: Context,
                gap: int, stride: int, threshold: float | None) -> list[PoolPair]:
    """The pool pairs of one video; what is left out is counted in the report."""
    report, where = ctx.report, f"{tree.part} {file_subject(n)}/{video}"
    found = tree.frames(n, video)
    if isinstance(found, str):
        report.count("missing_folder", found)
        return []
    unpaired = len(found.rgb.keys() ^ found.depth.keys())
    if unpaired:
        report.count("frame_in_one_view", f"{where}: {unpaired} frame(s) in one view only", unpaired)
    box = None
    if ctx.boxes is not None:
        box = ctx.boxes.get((n, video))
        if box is None:
            report.count("no_box", f"no box for {file_subject(n)}/{video} in the box file: video left out")
            return []
    pairs, missing = pool_pairs(found.rgb.keys() & found.depth.keys(), gap, stride, intervals)
    if missing:
        report.count("missing_frame", f"{where}: {missing} pair(s) with a missing frame", missing)
    subject = file_subject(n)
    rgb_dir, depth_dir = ctx.out / POOL_FOLDER / "rgb" / subject, ctx.out / POOL_FOLDER / "depth" / subject
    planned = []
    for first, second in pairs:
        au = ctx.au.change(n, video, first, second) if ctx.au else None
        if ctx.measure == "au" and au is None:
            report.count("no_au", f"{where} frames {first}, {second}: no AU values")
            continue
        key = pair_key(n, video, first, second)
        task = ci.PairTask(key, str(found.rgb[first]), str(found.rgb[second]), str(found.depth[first]),
                           str(found.depth[second]), rgb_out=str(rgb_dir / f"{key}.png"),
                           depth_out=str(depth_dir / f"{key}_depth.png"), settings=ctx.settings, box=box,
                           measure=ctx.measure, au_change=au, min_intensity=threshold)
        planned.append(PoolPair(n, video, first, second, au, task))
    return planned


# ---------------------------------------------------------------------------------------------
# Calibration


def calibrate(values: Sequence[float], percentile: float) -> float:
    """The `percentile`-th percentile of the labeled MEs' intensities (linear interpolation)."""
    return float(np.percentile(np.asarray(values, np.float64), percentile))


def plot_histograms(path: Path, labeled: Sequence[float], pool: Sequence[float], threshold: float,
                    measure: str) -> None:
    """Histograms (densities) of labeled-ME and unlabeled-pair intensities with the threshold line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    bins = np.histogram_bin_edges([*labeled, *pool], bins=40)
    if pool:
        axes.hist(pool, bins=bins, density=True, alpha=0.5, label=f"unlabeled pairs ({len(pool)})")
    axes.hist(labeled, bins=bins, density=True, alpha=0.5, label=f"labeled MEs ({len(labeled)})")
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    axes.set_xlabel(f"intensity ({measure})")
    axes.set_ylabel("density")
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------
# Outputs


def _fmt(value: object) -> str:
    """CSV cell text: floats to 6 significant digits, None empty."""
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A CSV file written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_fmt(v) for v in row] for row in rows)
    atomic_write_text(path, buffer.getvalue())


def write_lists(out: Path, samples: Sequence[tuple[int, str, str, int]], classes: Sequence[str]) -> list[str]:
    """Per-subject lists from (subject, rgb path, depth path, label), paths relative to `out`.

    S_test holds S's samples, S_train every other subject's, in the order given (both views in
    the same order). Lists of subjects an earlier run wrote that have no sample now are removed.
    Returns the subject names written to subName.txt.
    """
    lists = out / LIST_FOLDER
    subjects = sorted({s[0] for s in samples})
    names = [list_subject(n) for n in subjects]
    wanted = {f"{name}_{split}.txt" for name in names for split in ("train", "test")}
    for view, column in (("v_rgb", 1), ("v_depth", 2)):
        folder = lists / view
        folder.mkdir(parents=True, exist_ok=True)
        for n in subjects:
            for split, chosen in (("test", [s for s in samples if s[0] == n]),
                                  ("train", [s for s in samples if s[0] != n])):
                text = "".join(f"{s[column]} {s[3]} {DBTYPE}\n" for s in chosen)
                atomic_write_text(folder / f"{list_subject(n)}_{split}.txt", text)
        for stale in folder.iterdir():
            if _SUBJECT_LIST.match(stale.name) and stale.name not in wanted:
                stale.unlink()
    atomic_write_text(lists / "v_rgb" / "subName.txt", "".join(f"{name}\n" for name in names))
    atomic_write_text(lists / "classes.txt", "".join(f"{name}\n" for name in classes))
    return names


def write_pool_lists(out: Path, kept: Sequence[tuple[str, str, float]]) -> None:
    """`data/v_rgb/pretrain.txt` and `data/v_depth/pretrain.txt` from (rgb path, depth path,
    intensity): lines `<path> -1 0 <intensity>`."""
    for view, column in (("v_rgb", 0), ("v_depth", 1)):
        text = "".join(f"{k[column]} -1 {DBTYPE} {k[2]:.6g}\n" for k in kept)
        atomic_write_text(out / LIST_FOLDER / view / "pretrain.txt", text)


def report_text(report_json: dict) -> str:
    """Human-readable version of the JSON report."""
    lab, pool, classes = report_json["labeled"], report_json["pool"], report_json["classes"]
    settings = report_json["settings"]
    lines = [f"CAS(ME)^3 preparation: {settings['root']} -> {settings['out']}",
             f"classes: {', '.join(f'{i} {c}' for i, c in enumerate(classes))}",
             f"labeled MEs: {lab['samples']} from {lab['annotation_rows']} annotation rows "
             f"({lab['written']} written, {lab['reused']} reused)",
             "", "class counts per subject:",
             "  " + "subject".ljust(10) + "".join(c.rjust(10) for c in classes) + "total".rjust(8)]
    for subject, counts in lab["per_subject"].items():
        lines.append("  " + subject.ljust(10) + "".join(str(counts.get(c, 0)).rjust(10) for c in classes)
                     + str(sum(counts.values())).rjust(8))
    lines.append("  " + "all".ljust(10) + "".join(str(lab["per_class"].get(c, 0)).rjust(10) for c in classes)
                 + str(lab["samples"]).rjust(8))
    for category in ("skipped", "excluded", "anomaly"):
        items = [i for i in report_json["items"] if i["category"] == category]
        lines += ["", f"{category} ({len(items)}):"]
        lines += [f"  [{i['kind']}] {i['source']}: {i['detail']}" for i in items]
    lines += ["", "counted:"]
    lines += [f"  [{kind}] {info['count']}, e.g. {info['example']}"
              for kind, info in report_json["counted"].items()]
    threshold = report_json["threshold"]
    value = "none" if threshold["value"] is None else f"{threshold['value']:.6g} ({threshold['source']})"
    lines += ["", f"intensity measure: {threshold['measure']}; pool threshold: {value}"]
    if pool["enabled"]:
        lines.append(f"pool ({', '.join(pool['parts'])}, gap {pool['gap']}, stride {pool['stride']}): "
                     f"{pool['pairs']} pairs from {pool['videos']} videos; kept {pool['kept']}, dropped "
                     f"{pool['dropped']}, skipped {pool['skipped']} ({pool['written']} written, "
                     f"{pool['reused']} reused)")
    else:
        lines.append("pool: not prepared (--pool none)")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Main flow


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_args(args: argparse.Namespace) -> None:
    """Validate flag values and paths; UserError naming the first problem."""
    for name in ("root", "part_b_root", "au_dir"):
        value = getattr(args, name)
        if value is not None and not Path(value).is_dir():
            raise UserError(f"{value}: --{name} folder not found")
    files = [(name, getattr(args, name)) for name in ("annotation", "box_file", "class_map")]
    for name, value in files + [("pool_exclude", v) for v in args.pool_exclude]:
        if value is not None and not Path(value).is_file():
            raise UserError(f"{value}: --{name} file not found")
    out = Path(args.out).resolve()
    for name in ("root", "part_b_root", "au_dir"):
        value = getattr(args, name)
        if value is not None and _inside(out, Path(value).resolve()):
            raise UserError(f"--out {args.out} is inside the input tree --{name} {value}; "
                            f"choose an output folder outside it")
    if args.image_size < 0 or 0 < args.image_size < 16:
        raise UserError(f"--image_size {args.image_size}: use 0 (keep the crop size) or at least 16")
    if args.gap < 1 or args.stride < 1:
        raise UserError(f"--gap {args.gap} and --stride {args.stride} must be at least 1")
    if args.rgb_gain <= 0 or args.depth_gain <= 0:
        raise UserError("--rgb_gain and --depth_gain must be positive")
    if not 0 <= args.calibration_percentile <= 100:
        raise UserError(f"--calibration_percentile {args.calibration_percentile}: must be in 0..100")
    if args.crop_margin < 0:
        raise UserError(f"--crop_margin {args.crop_margin}: must be >= 0")
    if args.workers < 0:
        raise UserError(f"--workers {args.workers}: must be >= 0")
    if args.crop == "box" and args.box_file is None:
        raise UserError("--crop box needs --box_file")
    if args.box_file is not None and args.crop != "box":
        raise UserError(f"--box_file is only used with --crop box (got --crop {args.crop})")
    if args.intensity == "au" and args.au_dir is None:
        raise UserError("--intensity au needs --au_dir (OpenFace CSVs)")
    if args.calibrate and args.intensity_threshold is not None:
        raise UserError("use either --calibrate or --intensity_threshold, not both")
    if "b" in args.pool and args.part_b_root is None:
        raise UserError(f"--pool {args.pool} needs --part_b_root")


def check_settings(out: Path, settings: ci.ImageSettings, box_file: str | None, overwrite: bool) -> None:
    """Refuse to mix images made with other settings in one output folder; `overwrite` discards
    the cache instead, so that every pair is recomputed."""
    cache = out / CACHE_FOLDER
    current = {"crop": settings.crop, "crop_margin": settings.crop_margin, "image_size": settings.image_size,
               "rgb_gain": settings.rgb_gain, "depth_gain": settings.depth_gain,
               "box_file_sha1": hashlib.sha1(Path(box_file).read_bytes()).hexdigest() if box_file else None}
    path = cache / "settings.json"
    if overwrite:
        for name in ("settings.json", "labeled.jsonl", "pool.jsonl"):
            (cache / name).unlink(missing_ok=True)
    elif path.is_file():
        previous = json.loads(path.read_text())
        changed = [f"{k} {previous.get(k)!r} -> {v!r}" for k, v in current.items() if previous.get(k) != v]
        if changed:
            raise UserError(f"{out} was prepared with other settings ({'; '.join(changed)}); "
                            f"use a new --out or add --overwrite")
    atomic_write_json(path, current)


def _strict_check(report: Report, strict: bool) -> None:
    item = report.first("skipped")
    if strict and item is not None:
        raise UserError(f"{item.source}: {item.detail} (--strict)")


def labeled_stage(rows: Sequence[AnnotatedRow], tree: SourceTree, ctx: Context,
                  args: argparse.Namespace) -> list[tuple[LabeledPair, ci.PairResult]]:
    """Plan, compute and check the labeled MEs; the usable ones with their results."""
    planned = plan_labeled(rows, tree, ctx)
    _strict_check(ctx.report, args.strict)
    results = run_pairs([p.task for p in planned], PairCache(ctx.out / CACHE_FOLDER / "labeled.jsonl"),
                        args.workers, "labeled MEs")
    usable = []
    for pair in planned:
        result = results[pair.task.key]
        if result.status == "skipped":
            ctx.report.add("skipped", result.kind, pair.row.source, result.reason)
            continue
        for kind, detail in result.notes:
            ctx.report.add("anomaly", kind, pair.row.source, detail)
        usable.append((pair, result))
    _strict_check(ctx.report, args.strict)
    return sorted(usable, key=lambda pr: (pr[0].row.subject, pr[0].row.video, pr[0].row.onset, pr[0].row.apex))


@dataclass(frozen=True)
class PoolOutcome:
    """The pool stage's numbers for the report, and every pair's intensity for the histogram."""
    parts: list[str]
    videos: int
    pairs: int
    kept: int
    status: Counter[str]
    values: list[float | None]


def pool_stage(rows: Sequence[AnnotatedRow], tree_a: SourceTree, ctx: Context, args: argparse.Namespace,
               threshold: float | None) -> PoolOutcome:
    """Plan and compute the unlabeled pairs; write pretrain.txt and intensity_pool.csv."""
    intervals: dict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)
    extra = [row for path in args.pool_exclude
             for row in parse_rows(read_table(path), ctx.report, labeled=False)]
    for row in [*rows, *extra]:
        intervals[(row.subject, row.video)].append((row.onset, row.end))
    trees = ([tree_a] if "a" in args.pool else []) + (
        [SourceTree(Path(args.part_b_root), "Part B", ctx.report)] if "b" in args.pool else [])
    planned = plan_pool(trees, intervals, ctx, args.gap, args.stride, threshold)
    results = run_pairs([p.task for p in planned], PairCache(ctx.out / CACHE_FOLDER / "pool.jsonl"),
                        args.workers, "pool pairs")
    kept, table, values = [], [], []
    for pair in planned:
        result = results[pair.task.key]
        for kind, detail in result.notes:
            ctx.report.count(kind, detail)
        if result.status == "skipped":
            ctx.report.count(result.kind, result.reason)
            continue
        value = ci.intensity_of(args.intensity, result.mad, result.flow, pair.au)
        values.append(value)
        is_kept = result.status in ("written", "reused")
        if is_kept:
            kept.append((os.path.relpath(pair.task.rgb_out, ctx.out),
                         os.path.relpath(pair.task.depth_out, ctx.out), value))
        table.append((pair.task.key, value, file_subject(pair.subject), pair.video, pair.first, pair.second,
                      result.mad, result.flow, pair.au, int(is_kept)))
    write_pool_lists(ctx.out, kept)
    write_csv(ctx.out / "intensity_pool.csv",
              ("key", "intensity", "subject", "video", "frame1", "frame2", "mad", "flow", "au", "kept"), table)
    status = Counter(r.status for r in results.values())
    print(f"pool: {len(planned)} pairs; kept {len(kept)}, dropped {status['dropped']}"
          + (f" below {threshold:.6g} ({args.intensity})" if threshold is not None else "")
          + f", skipped {status['skipped']}")
    return PoolOutcome([t.part for t in trees], len({(p.subject, p.video) for p in planned}), len(planned),
                       len(kept), status, values)


@dataclass(frozen=True)
class Threshold:
    """The pool threshold: `source` 'calibrated', 'given' or None (no threshold); `labeled` holds
    the labeled intensities calibration uses (apex != onset, measure available)."""
    value: float | None
    source: str | None
    labeled: list[float]


def decide_threshold(args: argparse.Namespace,
                     labeled: Sequence[tuple[LabeledPair, ci.PairResult]]) -> Threshold:
    """Calibrate (a percentile of the labeled intensities, printed) or take --intensity_threshold."""
    values = [v for p, r in labeled if p.row.apex != p.row.onset
              for v in [ci.intensity_of(args.intensity, r.mad, r.flow, p.task.au_change)] if v is not None]
    if not args.calibrate:
        given = args.intensity_threshold
        return Threshold(given, None if given is None else "given", values)
    if not values:
        raise UserError(f"--calibrate: no labeled ME has a {args.intensity!r} intensity")
    value = calibrate(values, args.calibration_percentile)
    print(f"calibrated intensity threshold ({args.intensity}, {args.calibration_percentile:g}th percentile "
          f"of {len(values)} labeled MEs): {value:.6g}")
    return Threshold(value, "calibrated", values)


def prepare(args: argparse.Namespace) -> dict:
    """Run the whole preparation; returns the report (also written as prepare_report.json)."""
    check_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = ci.ImageSettings(args.crop, args.crop_margin if args.crop == "face" else 0.0,
                                args.image_size, args.rgb_gain, args.depth_gain)
    check_settings(out, settings, args.box_file, args.overwrite)
    if args.crop == "face":
        try:
            ci.face_detector()
        except RuntimeError as err:
            raise UserError(str(err)) from None
    class_map = read_class_map(args.class_map) if args.class_map else builtin_class_map(args.classes)
    ctx = Context(out, settings, class_map, f"casme3_diff_me{len(class_map.classes)}", Report(),
                  read_boxes(args.box_file) if args.box_file else None,
                  AuTables(Path(args.au_dir)) if args.au_dir else None, args.intensity, args.keep_zero_gap)

    table = read_table(args.annotation, args.sheet)
    rows = parse_rows(table, ctx.report, labeled=True)
    tree_a = SourceTree(Path(args.root), "Part A", ctx.report)
    labeled = labeled_stage(rows, tree_a, ctx, args)
    if not labeled:
        reasons = ", ".join(f"{k} {n}" for k, n in ctx.report.kinds("skipped").items())
        raise UserError(f"{table.name}: no usable ME ({reasons})")
    threshold = decide_threshold(args, labeled)
    pool = pool_stage(rows, tree_a, ctx, args, threshold.value) if args.pool != "none" else None
    if args.calibrate:
        pool_values = [v for v in (pool.values if pool else []) if v is not None]
        plot_histograms(out / "intensity_histogram.png", threshold.labeled, pool_values, threshold.value,
                        args.intensity)
    samples = [(p.row.subject, os.path.relpath(p.task.rgb_out, out), os.path.relpath(p.task.depth_out, out),
                p.label) for p, _ in labeled]
    subjects = write_lists(out, samples, class_map.classes)
    return write_reports(args, ctx, len(table.rows), labeled, subjects, threshold, pool)


def write_reports(args: argparse.Namespace, ctx: Context, annotation_rows: int,
                  labeled: Sequence[tuple[LabeledPair, ci.PairResult]], subjects: Sequence[str],
                  threshold: Threshold, pool: PoolOutcome | None) -> dict:
    """prepare_report.json/.txt, class_counts.csv, report_items.csv, intensity_labeled.csv; prints
    a summary and returns the JSON report."""
    out, report, classes = ctx.out, ctx.report, ctx.class_map.classes
    write_csv(out / "intensity_labeled.csv",
              ("key", "intensity", "subject", "video", "frame1", "frame2", "mad", "flow", "au", "class"),
              [(p.task.key, ci.intensity_of(args.intensity, r.mad, r.flow, p.task.au_change),
                file_subject(p.row.subject), p.row.video, p.row.onset, p.row.apex, r.mad, r.flow,
                p.task.au_change, p.class_name) for p, r in labeled])
    per_subject: dict[str, Counter[str]] = {name: Counter() for name in subjects}
    for pair, _ in labeled:
        per_subject[list_subject(pair.row.subject)][pair.class_name] += 1
    status = Counter(r.status for _, r in labeled)
    pool_json: dict = {"enabled": pool is not None}
    if pool is not None:
        pool_json.update(parts=pool.parts, gap=args.gap, stride=args.stride, videos=pool.videos,
                         pairs=pool.pairs, kept=pool.kept, dropped=pool.status["dropped"],
                         skipped=pool.status["skipped"], written=pool.status["written"],
                         reused=pool.status["reused"])
    report_json = {
        "settings": dict(sorted(vars(args).items())),
        "classes": list(classes),
        "image_folder": ctx.image_folder,
        "subjects": list(subjects),
        "labeled": {"annotation_rows": annotation_rows, "samples": len(labeled), "written": status["written"],
                    "reused": status["reused"], "per_subject": {s: dict(c) for s, c in per_subject.items()},
                    "per_class": dict(Counter(p.class_name for p, _ in labeled))},
        "items": [vars(item) for item in report.items],
        "item_counts": {c: dict(report.kinds(c)) for c in ("skipped", "excluded", "anomaly")},
        "counted": {k: {"count": n, "example": report.examples[k]} for k, n in sorted(report.counts.items())},
        "threshold": {"value": threshold.value, "source": threshold.source, "measure": args.intensity,
                      "percentile": args.calibration_percentile if args.calibrate else None,
                      "n_labeled": len(threshold.labeled)},
        "pool": pool_json,
    }
    atomic_write_json(out / "prepare_report.json", report_json)
    atomic_write_text(out / "prepare_report.txt", report_text(report_json))
    write_csv(out / "class_counts.csv", ("subject", *classes, "total"),
              [(s, *(c.get(k, 0) for k in classes), sum(c.values())) for s, c in per_subject.items()])
    write_csv(out / "report_items.csv", ("category", "kind", "source", "detail"),
              [(i.category, i.kind, i.source, i.detail) for i in report.items])
    _print_summary(report_json, report, out)
    return report_json


def _print_summary(report_json: dict, report: Report, out: Path) -> None:
    lab = report_json["labeled"]
    print(f"labeled MEs: {lab['samples']} of {lab['annotation_rows']} rows ({lab['written']} written, "
          f"{lab['reused']} reused) over {len(lab['per_subject'])} subjects; "
          + ", ".join(f"{c} {lab['per_class'].get(c, 0)}" for c in report_json["classes"]))
    for category in ("skipped", "excluded", "anomaly"):
        kinds = report.kinds(category)
        if kinds:
            first = report.first(category)
            print(f"{category}: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
                  + f" (e.g. {first.source}: {first.detail})")
    print(f"lists: {out / LIST_FOLDER}; report: {out / 'prepare_report.txt'}")


def build_parser() -> argparse.ArgumentParser:
    """The command line of `scripts/prepare_casme3.py`."""
    parser = argparse.ArgumentParser(
        description="Prepare CAS(ME)^3 for DVSCL: RGB and depth difference images of the labeled MEs, "
                    "LOSO lists and an unlabeled pre-training pool with per-pair intensities.")
    inputs = parser.add_argument_group("inputs and output")
    inputs.add_argument("--root", required=True, help="Part A root holding RGB/ and depth/")
    inputs.add_argument("--annotation", required=True,
                        help="ME annotation: the V2 .xlsx (sheet 'label'), the V1 .xls or a .csv with "
                             "columns Subject, Filename, Onset, Apex, Offset, emotion")
    inputs.add_argument("--sheet", default=None, help="workbook sheet (default 'label', or the only sheet)")
    inputs.add_argument("--out", required=True, help="output data folder (outside every input tree)")
    inputs.add_argument("--overwrite", action="store_true",
                        help="recompute every pair (needed to change image settings in an existing --out)")
    inputs.add_argument("--workers", type=int, default=0, help="worker processes (0: in this process)")
    inputs.add_argument("--strict", action="store_true",
                        help="stop at the first skipped ME instead of reporting it")

    labels = parser.add_argument_group("labels")
    labels.add_argument("--classes", type=int, choices=(3, 4), default=4,
                        help="4: negative, others, positive, surprise; 3: without others")
    labels.add_argument("--class_map", default=None,
                        help="file of '<emotion> <class>' lines ('-' drops an emotion); overrides --classes")
    labels.add_argument("--keep_zero_gap", action="store_true",
                        help="keep MEs with Apex == Onset (all-zero difference; the published lists kept them)")

    images = parser.add_argument_group("images")
    images.add_argument("--image_size", type=int, default=256, help="output side in pixels (0: crop size)")
    images.add_argument("--crop", choices=("face", "box", "none"), default=None,
                        help="face: OpenCV Haar cascade on the first frame; box: --box_file; none: whole "
                             "frame (default: box with --box_file, else face)")
    images.add_argument("--box_file", default=None, help="CSV Subject, Filename, x, y, w, h: one box per video")
    images.add_argument("--crop_margin", type=float, default=0.2,
                        help="margin added on each side of a detected face, as a fraction of its side")
    images.add_argument("--rgb_gain", type=float, default=2.0,
                        help="grey levels per 8-bit intensity step: pixel = 128 + gain * (apex - onset); "
                             "the default saturates at +-64 levels (as synthetic.py)")
    images.add_argument("--depth_gain", type=float, default=16.0,
                        help="grey levels per raw depth unit (mm): pixel = 128 + gain * (apex - onset); "
                             "the default saturates at +-8 mm (as synthetic.py)")

    pool = parser.add_argument_group("unlabeled pre-training pool")
    pool.add_argument("--pool", choices=("auto", "none", "a", "b", "ab"), default="auto",
                      help="sources: Part A outside annotated intervals (a), Part B (b); auto: ab with "
                           "--part_b_root, else a")
    pool.add_argument("--part_b_root", default=None, help="Part B root (same layout as Part A)")
    pool.add_argument("--pool_exclude", action="append", default=[],
                      help="more annotations (e.g. macro-expressions; columns Subject, Filename, Onset"
                           "[, Apex, Offset]) whose intervals stay out of the pool (repeatable)")
    pool.add_argument("--gap", type=int, default=6, help="frames between the two frames of a pair")
    pool.add_argument("--stride", type=int, default=30, help="frames between consecutive pairs")
    pool.add_argument("--intensity", choices=ci.MEASURES, default="mad",
                      help="pair intensity written to pretrain.txt: mad (mean absolute RGB difference in "
                           "the crop, 8-bit levels), flow (mean Farneback flow magnitude in output pixels), "
                           "au (max over AUs of the absolute AU change)")
    pool.add_argument("--au_dir", default=None,
                      help="OpenFace CSVs as AU_DIR/<Subject>/<Filename>.csv (frame, AUxx_r columns)")
    pool.add_argument("--calibrate", action="store_true",
                      help="threshold = a low percentile of the labeled MEs' intensities; also plots "
                           "intensity_histogram.png")
    pool.add_argument("--calibration_percentile", type=float, default=5.0,
                      help="percentile of the labeled intensities used by --calibrate")
    pool.add_argument("--intensity_threshold", type=float, default=None,
                      help="keep pool pairs with intensity >= this")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point; returns the report."""
    args = build_parser().parse_args(argv)
    if args.crop is None:
        args.crop = "box" if args.box_file else "face"
    if args.pool == "auto":
        args.pool = "ab" if args.part_b_root else "a"
    return prepare(args)
