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
their frames (`images.estimate_apex`). A CASME II or SAMM row whose apex the sheet lacks or gets
wrong (not a frame number, outside the clip, not after the onset) gets the same estimate over the
clip's frames from the onset on (`estimate_bad_apex`), or is left out.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from dataset import DATABASES as DATABASE_NAMES, DEFAULT_CLASS_NAMES
from scripts.datatools.common.frames import frame_index
from scripts.datatools.common.report import Report
from scripts.datatools.common.sheets import Sheet, cell_int, cell_text, read_sheet
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
# The standard MEGC2019-CD (442 samples of 68 subjects): samples per database and class.
STANDARD_COUNTS = {"smic": {"negative": 70, "positive": 51, "surprise": 43},
                   "casme2": {"negative": 88, "positive": 32, "surprise": 25},
                   "samm": {"negative": 92, "positive": 26, "surprise": 15}}
SMIC_APEX_REASON = "no apex annotation"
# The sheets' columns (matched without case and spaces: `common.sheets.column_key`)
CASME2_COLUMNS = ("Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Estimated Emotion")
SAMM_COLUMNS = ("Subject", "Filename", "Onset Frame", "Apex Frame", "Offset Frame", "Estimated Emotion")
CASME2_FRAMES, CASME2_SHEET = "CASME2_RAW_selected", "CASME2-coding-20140508.xlsx"
SAMM_FRAMES, SAMM_SHEET = "SAMM", "SAMM_Micro_FACS_Codes_v2.xlsx"
FRAME_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".png")
_SMIC_SUBJECT = re.compile(r"^s0*(\d+)$", re.IGNORECASE)
_CASME2_SUBJECT = re.compile(r"^(?:sub)?0*(\d+)$", re.IGNORECASE)


def database_name(database: str) -> str:
    """The database's printed name (`dataset.DATABASES`): 'SMIC-HS', 'CASME II', 'SAMM'."""
    return DATABASE_NAMES[DBTYPES[database]]


def subject_name(database: str, number: int) -> str:
    """Composite subject name, unique across databases: `smic_s1`, `casme2_sub01`, `samm_006`."""
    return {"smic": f"smic_s{number}", "casme2": f"casme2_sub{number:02d}", "samm": f"samm_{number:03d}"}[database]


@dataclass(frozen=True)
class Clip:
    """One micro-expression to encode. `frames`: (frame number, path) in frame order: the onset and
    apex frames of an annotated clip; with `apex` None (to be estimated), every frame from the onset
    on, and `apex_reason` says why the apex is estimated ('' when annotated)."""
    database: str
    subject: str
    video: str
    emotion: str
    class_name: str
    onset: int
    apex: int | None
    frames: tuple[tuple[int, str], ...]
    source: str
    apex_reason: str = ""

    @property
    def label(self) -> int:
        """Index of `class_name` in CLASSES."""
        return CLASSES.index(self.class_name)


def cell_number(value: object) -> int | None:
    """A frame or subject number (a whole number >= 0) from a cell; None when it is not one."""
    try:
        number = cell_int(value)
    except ValueError:
        return None
    return number if number is not None and number >= 0 else None


def clip_frames(folder: Path) -> dict[int, Path]:
    """Frame number -> image file of a clip folder (`common.frames.frame_index` of `FRAME_SUFFIXES`)."""
    return frame_index(folder, FRAME_SUFFIXES)


class LeftOut(Exception):
    """A row or folder that cannot be used; `kind` names the reason in the report."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class ApexProblem(NamedTuple):
    """Why a sheet's apex cannot be used: report `kind` and `detail` when the row is left out,
    `reason` (e.g. "apex '/'", 'apex outside the clip') when its apex is estimated instead."""
    kind: str
    detail: str
    reason: str


def frames_from(frames: dict[int, Path], onset: int) -> tuple[tuple[int, str], ...]:
    """(frame number, path) of a clip's frames from `onset` on, in frame order: what the apex
    estimate searches. LeftOut when there is no later frame than the onset."""
    kept = tuple((number, str(path)) for number, path in sorted(frames.items()) if number >= onset)
    if len(kept) < 2:
        raise LeftOut("too_few_frames", f"{len(kept)} frame(s) from the onset on: the apex estimate needs "
                                        f"an onset and a later frame")
    return kept


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
                index = clip_frames(clip_folder)
                try:
                    frames = frames_from(index, min(index, default=0))
                except LeftOut as problem:
                    warn(report, problem.kind, str(clip_folder), str(problem))
                    continue
                clips.append(Clip("smic", subject_name("smic", number), clip_folder.name, emotion,
                                  EMOTION_CLASS["smic"][emotion], frames[0][0], None, frames, str(clip_folder),
                                  SMIC_APEX_REASON))
    return clips


# ---------------------------------------------------------------------------------------------
# CASME II and SAMM: an annotation sheet and frame folders


def read_casme2(root: Path, sheet_path: Path | None, report: Report, estimate_bad_apex: bool = True) -> list[Clip]:
    """CASME II clips: `root` holds `CASME2_RAW_selected/` (or is it); the sheet defaults to
    `root/CASME2-coding-20140508.xlsx`. `estimate_bad_apex`: a row whose apex the sheet lacks or gets
    wrong is kept with an estimated apex (else left out)."""
    frames_root = root / CASME2_FRAMES if (root / CASME2_FRAMES).is_dir() else root
    sheet = read_sheet(sheet_path or root / CASME2_SHEET, CASME2_COLUMNS)

    def subject_of(cell: object) -> int | None:
        match = _CASME2_SUBJECT.match(cell_text(cell))
        return int(match.group(1)) if match else None

    return _annotated("casme2", sheet, subject_of, lambda n, video: frames_root / f"sub{n:02d}" / video, report,
                      estimate_bad_apex)


def read_samm(root: Path, sheet_path: Path | None, report: Report, estimate_bad_apex: bool = True) -> list[Clip]:
    """SAMM clips: `root` holds the subject folders (directly or under `SAMM/`); the sheet defaults
    to `root/SAMM_Micro_FACS_Codes_v2.xlsx`, else the one beside `root`. `estimate_bad_apex` as for
    `read_casme2`."""
    frames_root = root / SAMM_FRAMES if (root / SAMM_FRAMES).is_dir() else root
    if sheet_path is None:
        sheet_path = next((p for p in (root / SAMM_SHEET, root.parent / SAMM_SHEET) if p.is_file()), root / SAMM_SHEET)
    sheet = read_sheet(sheet_path, SAMM_COLUMNS)
    return _annotated("samm", sheet, cell_number, lambda n, video: frames_root / f"{n:03d}" / video, report,
                      estimate_bad_apex)


def _annotated(database: str, sheet: Sheet, subject_of: Callable[[object], int | None],
               folder_of: Callable[[int, str], Path], report: Report, estimate_bad_apex: bool) -> list[Clip]:
    """The usable rows of an annotation sheet as clips (a row with an unusable apex: apex None, to
    be estimated, when `estimate_bad_apex`); the others reported (mapping: excluded; anything else:
    skipped with a warning)."""
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
        identity = (number, video, cell_text(cells.get("onsetframe")), cell_text(cells.get("apexframe")))
        if identity in seen:
            warn(report, "duplicate", source, f"same subject, clip, onset and apex as {seen[identity]}")
            continue
        seen[identity] = source
        folder = folder_of(number, video)
        try:
            onset, apex, frames, apex_reason = _row_frames(cells, clip_frames(folder), estimate_bad_apex)
        except LeftOut as problem:
            warn(report, problem.kind, source, f"{folder}: {problem}")
            continue
        clips.append(Clip(database, subject_name(database, number), video, emotion, mapping[emotion], onset, apex,
                          frames, source, apex_reason))
    return clips


def _row_frames(cells: dict[str, object], frames: dict[int, Path],
                estimate_bad_apex: bool) -> tuple[int, int | None, tuple[tuple[int, str], ...], str]:
    """(onset, apex, frames, apex_reason) of a sheet row's `Clip`: its onset and apex frames, or, when
    the sheet's apex is unusable and `estimate_bad_apex`, apex None and every frame from the onset on.
    LeftOut when the row cannot be used."""
    onset_text, apex_text = cell_text(cells.get("onsetframe")), cell_text(cells.get("apexframe"))
    onset, apex = cell_number(onset_text), cell_number(apex_text)
    if onset is None:
        raise LeftOut("bad_row", f"onset {onset_text!r} is not a frame number")
    _check_onset(frames, onset)
    problem = _apex_problem(frames, onset, apex, apex_text)
    if problem is None:
        if apex not in frames:
            raise LeftOut("missing_frame", f"frame {apex} is missing")
        return onset, apex, ((onset, str(frames[onset])), (apex, str(frames[apex]))), ""
    if not estimate_bad_apex:
        raise LeftOut(problem.kind, problem.detail)
    return onset, None, frames_from(frames, onset), problem.reason


def _check_onset(frames: dict[int, Path], onset: int) -> None:
    """Returns None when the clip has frames and its onset frame is one of them; LeftOut otherwise."""
    if not frames:
        raise LeftOut("missing_folder", "no clip folder with frames")
    first, last = min(frames), max(frames)
    if not first <= onset <= last:
        raise LeftOut("onset_outside_clip", f"onset frame {onset} is outside the clip (frames {first}..{last})")
    if onset not in frames:
        raise LeftOut("missing_frame", f"frame {onset} is missing")


def _apex_problem(frames: dict[int, Path], onset: int, apex: int | None, apex_text: str) -> ApexProblem | None:
    """Why the sheet's apex (`apex`, None when its cell `apex_text` is no frame number) cannot be
    used for a clip of `frames` from `onset`, or None when it can."""
    first, last = min(frames), max(frames)
    if apex is None:
        return ApexProblem("bad_row", f"apex {apex_text!r} is not a frame number", f"apex {apex_text!r}")
    if not first <= apex <= last:
        return ApexProblem("apex_outside_clip", f"apex frame {apex} is outside the clip (frames {first}..{last})",
                           "apex outside the clip")
    if apex < onset:
        return ApexProblem("apex_before_onset", f"apex frame {apex} is before onset frame {onset}",
                           "apex before the onset")
    if apex == onset:
        return ApexProblem("apex_equals_onset", f"apex == onset == {onset}: an all-zero difference",
                           "apex equal to the onset")
    return None
