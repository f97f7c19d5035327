"""CAS(ME)^3 annotations: the ME sheet's rows, crop-box files and the emotion -> class map (the
spreadsheets are read by `scripts.datatools.common.sheets`)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dataset import DEFAULT_CLASS_NAMES, file_subject, read_lines
from scripts.datatools.common.crop import Box
from scripts.datatools.common.report import Report
from scripts.datatools.common.sheets import Sheet, cell_int, filled, read_sheet
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


def read_annotation(path: str | Path, labeled: bool, sheet: str | None = None) -> Sheet:
    """An annotation sheet: the ME annotation (`labeled`: columns `ME_COLUMNS`) or a file of
    intervals kept out of the pool (`INTERVAL_COLUMNS`); the workbook's sheet `sheet`, else the
    first holding the header, sheet 'label' searched first."""
    return read_sheet(path, ME_COLUMNS if labeled else INTERVAL_COLUMNS, sheet, prefer="label")


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


def parse_rows(table: Sheet, report: Report, labeled: bool) -> list[AnnotatedRow]:
    """Validate the rows of an annotation sheet (`read_annotation`); unusable rows are reported as
    skipped, oddities as anomalies. `labeled`: the ME annotation (an apex and an emotion needed),
    else intervals excluded from the pool."""
    parsed = []
    for row_no, values in table.rows:
        source = table.source(row_no)
        subject_cell, video_cell = values.get("subject"), values.get("filename")
        subject = parse_subject(subject_cell) if filled(subject_cell) else None
        if subject is None:
            report.add("skipped", "bad_row", source, f"Subject {subject_cell!r} is not spNO.<n>")
            continue
        if isinstance(subject_cell, str) and subject_cell.strip() != file_subject(subject):
            report.add("anomaly", "subject_spelling", source,
                       f"Subject {subject_cell!r} read as {file_subject(subject)}")
        video = str(video_cell).strip() if filled(video_cell) else ""
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
        emotion = str(emotion_cell).strip().lower() if filled(emotion_cell) else None
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
    table = read_sheet(path, BOX_COLUMNS)
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
    for line_no, line in enumerate(read_lines(path), start=1):
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
