"""Tiny fake SMIC-HS, CASME II and SAMM releases for the tests (`scripts/data/make_fake_megc2019.py`).

Not real data. The releases have the real layouts, sheet columns and a few known anomalies, so
`scripts/data/prepare_megc2019.py` can be run end to end without the licensed databases:

    <out>/SMIC/HS/s<n>/micro/<class>/<clip>/image<number>.bmp      colour BMP frames
    <out>/CASME2/CASME2_RAW_selected/sub<nn>/<Filename>/img<number>.jpg
    <out>/CASME2/CASME2-coding-20140508.xlsx                       the real columns
    <out>/SAMM/<nnn>/<Filename>/<nnn>_<number:05d>.jpg             greyscale JPEG frames
    <out>/SAMM/SAMM_Micro_FACS_Codes_v2.xlsx                       description rows above the header

Frames are a smooth texture per clip with a Gaussian blob that brightens linearly from the onset to
the apex and fades after it, so the apex is the frame most unlike the onset (the SMIC estimate
must find `SMIC_APEX`). A sheet row whose apex is not a frame of its clip gets the blob's peak at
the middle of the clip (`BAD_APEX_PEAK`: what the estimate must find).

Anomalies: rows whose apex the sheet lacks or gets wrong (a CASME II apex '/' and an apex outside
its clip; a SAMM apex -1 and an apex outside its clip), kept with an estimated apex by default and
left out with a warning by `--no_estimate_bad_apex`; and, always left out with a warning, a SMIC
clip of one frame, a CASME II missing apex frame and subject without folders, a duplicated SAMM
row. Emotions outside the MEGC2019 classes (CASME II others and fear, SAMM Other) are excluded by
the mapping.

The output folder is claimed through its run record (`util.claim_folder`, tool `TOOL`): a folder
another tool wrote is refused; `overwrite` removes earlier fake releases (`OWNS`) first.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

import util
from scripts.datatools.megc2019.databases import CASME2_FRAMES, CASME2_SHEET, SAMM_SHEET

TOOL = "make_fake_megc2019.py"
OWNS = ("SMIC", "CASME2", "SAMM")  # the three releases

FRAME_W, FRAME_H = 64, 48
BLOB_CENTER, BLOB_SIGMA, BLOB_AMPLITUDE = (34, 26), 5.0, 40.0
NOISE_SIGMA = 1.5
# subject, class folder, clip, first frame number, frames, apex position (index into the clip)
SMIC_CLIPS = (
    (1, "negative", "s1_ne_01", 134001, 9, 5),
    (1, "positive", "s1_po_01", 134101, 8, 3),
    (1, "surprise", "s1_sur_01", 134201, 10, 7),
    (2, "negative", "s2_ne_01", 20001, 8, 4),
    (2, "positive", "s2_po_01", 20101, 9, 6),
    (2, "negative", "s2_ne_02", 20201, 1, 0),
)
SMIC_APEX = {clip: first + apex for _, _, clip, first, n, apex in SMIC_CLIPS if n > 1}
CASME2_HEADER = ("Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Action Units",
                 "Estimated Emotion")
# Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame, Estimated Emotion (sheet row i + 2)
CASME2_ROWS = (
    ("01", "EP02_01f", 46, 50, 55, "happiness"),
    ("01", "EP03_02", 10, 14, 19, "disgust"),
    ("01", "EP19_05f", 30, 33, 38, "repression"),
    (2, "EP01_11f", 80, 85, 90, "surprise"),
    (2, "EP05_03", 5, 8, 12, "others"),
    ("01", "EP07_01", 20, 24, 29, "fear"),
    (2, "EP06_01f", 12, "/", 20, "disgust"),
    (2, "EP08_04", 40, 70, 75, "disgust"),
    (2, "EP09_02", 60, 63, 68, "happiness"),
    ("03", "EP01_01", 10, 14, 18, "surprise"),
)
CASME2_MISSING_FRAME = ("EP09_02", 63)
CASME2_WITHOUT_FOLDERS = {3}
SAMM_PREAMBLE = 13  # rows of description above the header, as in the real sheet
SAMM_HEADER = ("Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration",
               "Type", "Action Units", "Notes", "Estimated Emotion")
# Subject, Filename, Onset Frame, Apex Frame, Offset Frame, Estimated Emotion
SAMM_ROWS = (
    (6, "006_1_2", 5562, 5566, 5571, "Anger"),
    ("006", "006_1_3", 1200, 1204, 1209, "Contempt"),
    (7, "007_3_1", 300, 305, 311, "Happiness"),
    (7, "007_5_2", 2000, 2003, 2008, "Surprise"),
    (7, "007_6_1", 900, 903, 907, "Other"),
    (6, "006_2_1", 700, 740, 745, "Disgust"),
    (6, "006_1_2", 5562, 5566, 5571, "Anger"),
    (7, "007_4_1", 1500, -1, 1510, "Fear"),
)
CLIP_PADDING = 2  # frames before the onset, and after the offset (or a short clip's end)
CLIP_LENGTH = 14  # frames of an annotated clip's folder from its onset


def peak_frame(onset: int, apex: int | str) -> int:
    """Frame number of the blob's peak in a sheet row's clip: the annotated apex when it lies in
    the clip after the onset, else the middle of the clip's frames from the onset on."""
    inside = isinstance(apex, int) and onset < apex < onset + CLIP_LENGTH
    return apex if inside else onset + CLIP_LENGTH // 2


# clip -> the frame the apex estimate must find, for every sheet row whose apex is not a frame of its
# clip after the onset
BAD_APEX_PEAK = {video: peak_frame(onset, apex) for rows in (CASME2_ROWS, SAMM_ROWS)
                 for _, video, onset, apex, _, _ in rows if peak_frame(onset, apex) != apex}


@dataclass(frozen=True)
class FakeReleases:
    """Roots of the built fake releases, as `scripts/data/prepare_megc2019.py` takes them."""
    smic: Path
    casme2: Path
    samm: Path


def render_clip(seed: int, n_frames: int, apex: int, grey: bool = False) -> list[np.ndarray]:
    """`n_frames` BGR (H, W, 3) uint8 frames ((H, W) when `grey`): the blob rises linearly over
    frames 0..apex and falls to a third after it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:FRAME_H, 0:FRAME_W].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, 3)
    base = np.stack([110 + 35 * np.sin(x / 8 + p) + 25 * np.cos(y / 6 + p) for p in phase], axis=-1)
    blob = np.exp(-((x - BLOB_CENTER[0]) ** 2 + (y - BLOB_CENTER[1]) ** 2) / (2 * BLOB_SIGMA ** 2))
    frames = []
    for t in range(n_frames):
        if t <= apex:
            level = t / apex if apex else 0.0
        else:
            level = 1.0 - (2.0 / 3.0) * (t - apex) / max(1, n_frames - 1 - apex)
        image = base + BLOB_AMPLITUDE * level * blob[..., None] + rng.normal(0, NOISE_SIGMA, base.shape)
        frame = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if grey else frame)
    return frames


def _write_clip(folder: Path, names: list[str], frames: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in zip(names, frames):
        cv2.imwrite(str(folder / name), frame, [cv2.IMWRITE_JPEG_QUALITY, 95] if name.endswith(".jpg") else [])


def _annotated_clip(folder: Path, seed: int, onset: int, apex: int | str, name_of: Callable[[int], str],
                    grey: bool = False) -> None:
    """Frames onset - CLIP_PADDING .. onset + CLIP_LENGTH - 1, the blob's peak at `peak_frame`."""
    numbers = list(range(onset - CLIP_PADDING, onset + CLIP_LENGTH))
    frames = render_clip(seed, CLIP_LENGTH, peak_frame(onset, apex) - onset, grey)
    frames = [frames[0]] * CLIP_PADDING + frames
    _write_clip(folder, [name_of(n) for n in numbers], frames)


def _write_sheet(path: Path, preamble: int, header: tuple[str, ...], rows: list[tuple]) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    for i in range(preamble):
        sheet.append((f"description line {i + 1}",) if i % 3 != 2 else ())
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)


def build_fake_releases(out: str | Path, overwrite: bool = False) -> FakeReleases:
    """Write the three fake releases under `out` (created; refused when another tool wrote it) and
    return their roots."""
    out = Path(out)
    record = util.claim_folder(out, TOOL, {}, OWNS, overwrite)
    record.start()
    releases = FakeReleases(out / "SMIC", out / "CASME2", out / "SAMM")
    for i, (subject, cls, clip, first, n, apex) in enumerate(SMIC_CLIPS):
        folder = releases.smic / "HS" / f"s{subject}" / "micro" / cls / clip
        _write_clip(folder, [f"image{first + t:06d}.bmp" for t in range(n)], render_clip(100 + i, n, apex))

    frames_root = releases.casme2 / CASME2_FRAMES
    for i, (subject, video, onset, apex, _, _) in enumerate(CASME2_ROWS):
        number = int(subject)
        if number not in CASME2_WITHOUT_FOLDERS:
            _annotated_clip(frames_root / f"sub{number:02d}" / video, 200 + i, onset, apex, lambda n: f"img{n}.jpg")
    video, missing = CASME2_MISSING_FRAME
    next(frames_root.glob(f"sub*/{video}/img{missing}.jpg")).unlink()
    _write_sheet(releases.casme2 / CASME2_SHEET, 0, CASME2_HEADER,
                 [(s, v, on, ap, off, "4+7", e) for s, v, on, ap, off, e in CASME2_ROWS])

    for i, (subject, video, onset, apex, _, _) in enumerate(SAMM_ROWS):
        number = int(subject)
        _annotated_clip(releases.samm / f"{number:03d}" / video, 300 + i, onset, apex,
                        lambda n, s=number: f"{s:03d}_{n:05d}.jpg", grey=True)
    _write_sheet(releases.samm / SAMM_SHEET, SAMM_PREAMBLE, SAMM_HEADER,
                 [(s, v, 1, on, ap, off, off - on + 1, "Micro - 1/2", "4+7", "", e) for s, v, on, ap, off, e in SAMM_ROWS])
    record.finish()
    return releases
