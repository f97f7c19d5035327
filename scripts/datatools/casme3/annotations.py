"""CAS(ME)^3 annotation tables: spreadsheets, their rows, crop-box files and the emotion -> class map."""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from dataset import DEFAULT_CLASS_NAMES, file_subject
from scripts.datatools.casme3.images import Box
from scripts.datatools.casme3.report import Report
from util import UserError

EMOTION_TO_CLASS = {"disgust": "negative", "fear": "negative", "anger": "negative", "sad": "negative",
                    "happy": "positive", "surprise": "surprise", "others": "others"}
ME_COLUMNS = ("Subject", "Filename", "Onset", "Apex", "Offset", "emotion")
INTERVAL_COLUMNS = ("Subject", "Filename", "Onset")
BOX_COLUMNS = ("Subject", "Filename", "x", "y", "w", "h")
_SUBJECT = re.compile(r"^sp\s*no\.?\s*0*(\d+)$", re.IGNORECASE)
_CLASS_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def parse_subject(value: object) -> int | None:
    """Subject number of `spNO.12`, `spNo.12`, `spNO12`, `12` or 12; None if not a subject."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value) if float(value).is_integer() and value >= 0 else None
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    match = _SUBJECT.match(text)
    return int(match.group(1)) if match else None


@dataclass
class Table:
    """Rows of a spreadsheet or CSV keyed by normalised column name (stripped, lower case)."""
    path: Path
    sheet: str | None
    headers: list[str]
    rows: list[tuple[int, dict[str, object]]]

    @property
    def name(self) -> str:
        """The file (and sheet) for messages."""
        return f"{self.path}" + (f" (sheet {self.sheet!r})" if self.sheet else "")

    def require(self, columns: Iterable[str]) -> None:
        """UserError naming the first missing column."""
        present = {_norm(h) for h in self.headers}
        for column in columns:
            if _norm(column) not in present:
                raise UserError(f"{self.name}: no column {column!r} (columns: "
                                f"{', '.join(h for h in self.headers if h)})")

    def source(self, row_no: int) -> str:
        """`<file name> row <n>`: where a reported row comes from."""
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


def read_boxes(path: str | Path) -> dict[tuple[int, str], Box]:
    """Face boxes per video from a CSV with columns Subject, Filename, x, y, w, h (RGB pixels)."""
    table = read_table(path)
    table.require(BOX_COLUMNS)
    boxes: dict[tuple[int, str], Box] = {}
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


@dataclass(frozen=True)
class ClassMap:
    """Emotion -> label. `labels[emotion]` is None for an emotion left out (e.g. 'others' in 3 classes)."""
    classes: tuple[str, ...]
    labels: dict[str, int | None]


def builtin_class_map(n_classes: int) -> ClassMap:
    """CAS(ME)^3 mapping: 4 classes (negative, others, positive, surprise) or 3 (without others)."""
    classes = DEFAULT_CLASS_NAMES[n_classes]
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
