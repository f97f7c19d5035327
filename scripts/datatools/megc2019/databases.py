"""The three MEGC2019 releases read into clips: composite subject names, the 3-class mapping and
every row or folder that cannot be used, reported with its reason.

Layouts (frame numbers are the trailing digits of a frame's file name):

    SMIC-HS   <smic>/HS/s<n>/micro/<negative|positive|surprise>/<clip>/image<number>.bmp
    CASME II  <casme2>/CASME2_RAW_selected/sub<nn>/<Filename>/img<number>.jpg
              + CASME2-coding-20140508.xlsx (Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame,
              Estimated Emotion)
    SAMM      <samm>/<nnn>/<Filename>/<nnn>_<number>.jpg (or under <samm>/SAMM/)
              + SAMM_Micro_FACS_Codes_v2.xlsx (Subject, Filename, Onset Frame, Apex Frame,
              Offset Frame, Estimated Emotion)

SMIC has no apex annotation: its clips start at the onset, and the apex is estimated from all of
their frames (`images.estimate_apex`).
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dataset import DEFAULT_CLASS_NAMES
from scripts.datatools.casme3.report import Report
from scripts.datatools.megc2019.sheets import (CASME2_COLUMNS, SAMM_COLUMNS, Sheet, cell_number, cell_text,
                                               read_sheet)
from util import UserError

DATABASES = ("smic", "casme2", "samm")
DBTYPES = {"smic": 1, "casme2": 2, "samm": 3}  # the list's dbtype column; 0 is CAS(ME)^3
CLASSES = DEFAULT_CLASS_NAMES[3]  # negative, positive, surprise: labels 0, 1, 2
# The MEGC2019 composite mapping; an emotion not listed is left out of the composite.
EMOTION_CLASS = {
    "smic": {"negative": "negative", "positive": "positive", "surprise": "surprise"},
    "casme2": {"disgust": "negative", "repression": "negative", "happiness": "positive", "surprise": "surprise"},
    "samm": {"anger": "negative", "contempt": "negative", "disgust": "negative", "fear": "negative",
             "sadness": "negative", "happiness": "positive", "surprise": "surprise"},
}
CASME2_FRAMES, CASME2_SHEET = "CASME2_RAW_selected", "CASME2-coding-20140508.xlsx"
SAMM_FRAMES, SAMM_SHEET = "SAMM", "SAMM_Micro_FACS_Codes_v2.xlsx"
FRAME_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".png")
_TRAILING_NUMBER = re.compile(r"(\d+)$")
_SMIC_SUBJECT = re.compile(r"^s0*(\d+)$", re.IGNORECASE)
_CASME2_SUBJECT = re.compile(r"^(?:sub)?0*(\d+)$", re.IGNORECASE)


def subject_name(database: str, number: int) -> str:
    """Composite subject name, unique across databases: `smic_s1`, `casme2_sub01`, `samm_006`."""
    return {"smic": f"smic_s{number}", "casme2": f"casme2_sub{number:02d}", "samm": f"samm_{number:03d}"}[database]


@dataclass(frozen=True)
class Clip:
    """One micro-expression to encode. `frames`: (frame number, path) in frame order: the onset and
    apex frames of an annotated clip, every frame of a SMIC clip (`apex` None: to be estimated)."""
    database: str
    subject: str
    video: str
    emotion: str
    class_name: str
    onset: int
    apex: int | None
    frames: tuple[tuple[int, str], ...]
    source: str

    @property
    def label(self) -> int:
        """Index of `class_name` in CLASSES."""
        return CLASSES.index(self.class_name)


def frame_index(folder: Path) -> dict[int, Path]:
    """Frame number -> image file of a clip folder (number = the file stem's trailing digits)."""
    frames: dict[int, Path] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            match = _TRAILING_NUMBER.search(path.stem)
            if path.suffix.lower() in FRAME_SUFFIXES and match and path.is_file():
                frames.setdefault(int(match.group(1)), path)
    return frames


def warn(report: Report, kind: str, source: str, detail: str) -> None:
    """A row or folder left out: reported, and one warning line on stderr."""
    report.add("skipped", kind, source, detail)
    print(f"warning: {source}: {detail}; left out", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# SMIC-HS: folders by subject and class, no annotation


def read_smic(root: Path, report: Report) -> list[Clip]:
    """The micro-expression clips of SMIC-HS under `root` (holding `HS/`, or the HS folder itself)."""
    hs = root / "HS" if (root / "HS").is_dir() else root
    subjects = sorted((int(m.group(1)), p) for p in (hs.iterdir() if hs.is_dir() else ())
                      if p.is_dir() and (m := _SMIC_SUBJECT.match(p.name)))
    if not subjects:
        raise UserError(f"{hs}: no SMIC-HS subject folders s<n>/ (pass the folder holding HS/ as --smic)")
    clips = []
    for number, folder in subjects:
        micro = folder / "micro"
        if not micro.is_dir():
            warn(report, "missing_folder", str(folder), "no micro/ folder")
            continue
        for class_folder in sorted(p for p in micro.iterdir() if p.is_dir()):
            emotion = class_folder.name.lower()
            if emotion not in EMOTION_CLASS["smic"]:
                warn(report, "unknown_class", str(class_folder), f"class folder {class_folder.name!r} is not "
                     f"negative, positive or surprise")
                continue
            for clip_folder in sorted(p for p in class_folder.iterdir() if p.is_dir()):
                frames = sorted(frame_index(clip_folder).items())
                if len(frames) < 2:
                    warn(report, "too_few_frames", str(clip_folder),
                         f"{len(frames)} frame(s): an onset and a later apex frame are needed")
                    continue
                clips.append(Clip("smic", subject_name("smic", number), clip_folder.name, emotion,
                                  EMOTION_CLASS["smic"][emotion], frames[0][0], None,
                                  tuple((n, str(p)) for n, p in frames), str(clip_folder)))
    return clips


# ---------------------------------------------------------------------------------------------
# CASME II and SAMM: an annotation sheet and frame folders


def read_casme2(root: Path, sheet_path: Path | None, report: Report) -> list[Clip]:
    """CASME II clips: `root` holds `CASME2_RAW_selected/` (or is it); the sheet defaults to
    `root/CASME2-coding-20140508.xlsx`."""
    frames_root = root / CASME2_FRAMES if (root / CASME2_FRAMES).is_dir() else root
    sheet = read_sheet(sheet_path or root / CASME2_SHEET, CASME2_COLUMNS)

    def subject_of(cell: object) -> int | None:
        match = _CASME2_SUBJECT.match(cell_text(cell))
        return int(match.group(1)) if match else None

    return _annotated("casme2", sheet, subject_of, lambda n, video: frames_root / f"sub{n:02d}" / video, report)


def read_samm(root: Path, sheet_path: Path | None, report: Report) -> list[Clip]:
    """SAMM clips: `root` holds the subject folders (directly or under `SAMM/`); the sheet defaults
    to `root/SAMM_Micro_FACS_Codes_v2.xlsx`, else the one beside `root`."""
    frames_root = root / SAMM_FRAMES if (root / SAMM_FRAMES).is_dir() else root
    if sheet_path is None:
        sheet_path = next((p for p in (root / SAMM_SHEET, root.parent / SAMM_SHEET) if p.is_file()), root / SAMM_SHEET)
    sheet = read_sheet(sheet_path, SAMM_COLUMNS)
    return _annotated("samm", sheet, cell_number, lambda n, video: frames_root / f"{n:03d}" / video, report)


def _annotated(database: str, sheet: Sheet, subject_of: Callable[[object], int | None],
               folder_of: Callable[[int, str], Path], report: Report) -> list[Clip]:
    """The usable rows of an annotation sheet as clips; the others reported (mapping: excluded;
    anything else: skipped with a warning)."""
    mapping = EMOTION_CLASS[database]
    clips, seen = [], {}
    for row_no, cells in sheet.rows:
        source = sheet.source(row_no)
        number, video = subject_of(cells.get("subject")), cell_text(cells.get("filename"))
        emotion = cell_text(cells.get("estimatedemotion")).lower()
        if number is None or not video or "/" in video:
            warn(report, "bad_row", source, f"Subject {cells.get('subject')!r} / Filename {cells.get('filename')!r} "
                                            f"not understood")
            continue
        if emotion not in mapping:
            # kind '<database> <emotion>', so the summary counts exclusions per database and emotion
            report.add("excluded", f"{database} {emotion or '(empty)'}", source,
                       f"emotion {emotion or '(empty)'!r} is not in the MEGC2019 classes")
            continue
        onset, apex = cell_number(cells.get("onsetframe")), cell_number(cells.get("apexframe"))
        if onset is None or apex is None:
            warn(report, "bad_row", source, f"onset {cells.get('onsetframe')!r} / apex {cells.get('apexframe')!r} "
                                            f"is not a frame number")
            continue
        identity = (number, video, onset, apex)
        if identity in seen:
            warn(report, "duplicate", source, f"same subject, clip, onset and apex as {seen[identity]}")
            continue
        seen[identity] = source
        folder = folder_of(number, video)
        frames = frame_index(folder)
        problem = _frame_problem(frames, onset, apex)
        if problem:
            warn(report, problem[0], source, f"{folder}: {problem[1]}")
            continue
        clips.append(Clip(database, subject_name(database, number), video, emotion, mapping[emotion], onset, apex,
                          ((onset, str(frames[onset])), (apex, str(frames[apex]))), source))
    return clips


def _frame_problem(frames: dict[int, Path], onset: int, apex: int) -> tuple[str, str] | None:
    """(kind, detail) of why a clip's onset and apex frames cannot be used, or None."""
    if not frames:
        return "missing_folder", "no clip folder with frames"
    first, last = min(frames), max(frames)
    for name, number in (("onset", onset), ("apex", apex)):
        if not first <= number <= last:
            return f"{name}_outside_clip", f"{name} frame {number} is outside the clip (frames {first}..{last})"
    if apex < onset:
        return "apex_before_onset", f"apex frame {apex} is before onset frame {onset}"
    if apex == onset:
        return "apex_equals_onset", f"apex == onset == {onset}: an all-zero difference"
    for number in (onset, apex):
        if number not in frames:
            return "missing_frame", f"frame {number} is missing"
    return None
