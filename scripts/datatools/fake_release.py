"""A tiny fake CAS(ME)^3 release for the tests and the README demo (`scripts/data/make_fake_casme3.py`).

Not real data. It has the real layout and the known anomalies so that `scripts/data/prepare_casme3.py`
can be run end to end without the licensed database:

    <out>/partA/RGB/<Subject>/<video>/color/<frame>.jpg      80 x 64 JPEG frames 1..36
    <out>/partA/depth/<Subject>/<video>/depth/<frame>.png    16-bit depth (0 = no measurement)
    <out>/partB/...                                          one unlabeled subject, same layout
    <out>/cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx          sheet 'label', the real columns
    <out>/boxes.csv                                          one face box per video
    <out>/openface/spNO.1/a.csv                              OpenFace-style AU intensities

Frames are a smooth texture per video. A labeled ME adds a Gaussian blob (brighter, and nearer in
depth) that ramps up from onset to apex and back down to offset. In every video, frames from
`EVENT_START` on carry a second, stronger blob: an unlabeled "event", so that exactly the pool pairs
straddling `EVENT_START` have a high intensity and all other pool pairs are identical frames.

Anomalies: subject folders `spNo.2` and `spNO210`; subject 3's depth frames lie directly in the
video folders; an uppercase task letter 'J'; Apex == Onset; an annotation subject spelled 'spNo.3';
a depth frame missing on disk; a duplicated row; a subject without folders; an unknown emotion; an
empty Offset; several MEs in one video.

The output folder is claimed through its run record (`util.claim_folder`, tool `TOOL`): a folder
another tool wrote is refused; `overwrite` removes an earlier fake release's entries (`OWNS`) first.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

import util
from dataset import file_subject
from scripts.datatools.common.format import write_png

FRAME_W, FRAME_H = 80, 64
N_FRAMES = 36
FACE_BOX = (8, 0, 64, 64)
EVENT_START = 31
ME_CENTER, ME_SIGMA = (40, 30), 5.0
EVENT_CENTER, EVENT_SIGMA, EVENT_AMPLITUDE, EVENT_DEPTH = (28, 46), 6.0, 60.0, 6.0
ME_DEPTH = 4.0
INVALID_PATCH = (12, 4, 6, 6)
DROPOUT = {(1, "a", 9): (44, 28, 4, 4)}
MISSING_DEPTH = {(2, "j", 11)}
DEPTH_WITHOUT_INNER_FOLDER = {3}
PART_A = {1: "spNO.1", 2: "spNo.2", 3: "spNO.3", 210: "spNO210"}
PART_A_VIDEOS = ("a", "j")
PART_B = {150: "spNO.150"}
PART_B_VIDEOS = ("a",)
AU_VIDEO = (1, "a")
AU_FAILED_FRAME = 28
ANNOTATION_NAME = "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx"
TOOL = "make_fake_casme3.py"
OWNS = ("partA", "partB", ANNOTATION_NAME, "boxes.csv", "openface")  # what the release is made of
COLUMNS = ("Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion")
# Subject, Filename, Onset, Apex, Offset, emotion (row i + 2 of the sheet)
ME_ROWS = (
    ("spNO.1", "a", 5, 9, 13, "disgust"),
    ("spNO.1", "a", 14, 18, 22, "surprise"),
    ("spNO.1", "J", 6, 10, 14, "happy"),
    ("spNO.2", "a", 8, 8, 12, "others"),
    ("spNO.2", "a", 15, 19, 23, "others"),
    ("spNO.2", "j", 6, 11, 16, "fear"),
    ("spNo.3", "a", 10, 14, 18, "happy"),
    ("spNO.3", "a", 19, 22, None, "sad"),
    ("spNO.210", "a", 6, 10, 14, "surprise"),
    ("spNO.210", "j", 15, 19, 23, "others"),
    ("spNO.1", "a", 5, 9, 13, "disgust"),
    ("spNO.9", "a", 5, 9, 13, "anger"),
    ("spNO.210", "j", 4, 8, 12, "repression"),
)


@dataclass(frozen=True)
class FakeRelease:
    """Paths of a built fake release."""
    root: Path
    part_b: Path
    annotation: Path
    boxes: Path
    au_dir: Path


def me_amplitude(row_index: int) -> float:
    """RGB blob amplitude (grey levels at the centre, at apex) of ME_ROWS[row_index]."""
    return 20.0 + 4.0 * row_index


def _blob(center: tuple[int, int], sigma: float) -> np.ndarray:
    y, x = np.mgrid[0:FRAME_H, 0:FRAME_W].astype(np.float64)
    return np.exp(-((x - center[0]) ** 2 + (y - center[1]) ** 2) / (2 * sigma ** 2))


def _ramp(t: int, onset: int, apex: int, offset: int | None) -> float:
    """0 before onset, rising to 1 at apex, falling to 0 at offset (apex when empty)."""
    end = offset if offset is not None else apex
    if onset <= t <= apex and apex > onset:
        return (t - onset) / (apex - onset)
    if apex < t <= end:
        return (end - t) / (end - apex)
    return 0.0


def _video_mes(n: int, video: str) -> list[tuple[int, int, int | None, float]]:
    """(onset, apex, offset, amplitude) of the distinct annotated MEs of one video."""
    found = {}
    for i, (subject, task, onset, apex, offset, _) in enumerate(ME_ROWS):
        if int(subject.split(".")[-1]) == n and task.lower() == video:
            found.setdefault((onset, apex, offset), me_amplitude(i))
    return [(*k, a) for k, a in found.items()]


def render_frames(n: int, video: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(frame index, BGR uint8 (H, W, 3), depth uint16 (H, W)) for frames 1..N_FRAMES of a video."""
    rng = np.random.default_rng(1000 * n + ord(video))
    y, x = np.mgrid[0:FRAME_H, 0:FRAME_W].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, 3)
    base = np.stack([120 + 40 * np.sin(x / 9 + p) + 30 * np.cos(y / 7 + p) for p in phase], axis=-1)
    depth_base = 700 + 50 * np.sin(x / 15 + phase[0]) + 30 * np.cos(y / 11)
    me_blob, event_blob = _blob(ME_CENTER, ME_SIGMA), _blob(EVENT_CENTER, EVENT_SIGMA)
    mes = _video_mes(n, video)
    frames = []
    for t in range(1, N_FRAMES + 1):
        level = sum(a * _ramp(t, on, ap, off) for on, ap, off, a in mes)
        near = sum(_ramp(t, on, ap, off) for on, ap, off, _ in mes) * ME_DEPTH
        event = float(t >= EVENT_START)
        signal = level * me_blob + event * EVENT_AMPLITUDE * event_blob
        rgb = np.clip(np.rint(base + signal[..., None]), 0, 255).astype(np.uint8)
        depth = np.rint(depth_base - near * me_blob - event * EVENT_DEPTH * event_blob).astype(np.uint16)
        for patch in (INVALID_PATCH, DROPOUT.get((n, video, t))):
            if patch is not None:
                px, py, pw, ph = patch
                depth[py:py + ph, px:px + pw] = 0
        frames.append((t, rgb, depth))
    return frames


def video_folders(root: Path, folder: str, video: str, inner_depth: bool = True) -> tuple[Path, Path]:
    """The RGB and depth frame folders of one video, created: `RGB/<folder>/<video>/color` and
    `depth/<folder>/<video>/depth` (without `inner_depth`: the depth video folder itself)."""
    rgb_dir = root / "RGB" / folder / video / "color"
    depth_dir = root / "depth" / folder / video
    if inner_depth:
        depth_dir = depth_dir / "depth"
    rgb_dir.mkdir(parents=True, exist_ok=True)
    depth_dir.mkdir(parents=True, exist_ok=True)
    return rgb_dir, depth_dir


def write_rgb_frame(folder: Path, t: int, bgr: np.ndarray) -> None:
    """Frame `t` of a video as `<t>.jpg`: (H, W, 3) uint8 BGR, JPEG written by OpenCV (another
    encoder gives other pixels)."""
    cv2.imwrite(str(folder / f"{t}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])


def write_depth_frame(folder: Path, t: int, depth: np.ndarray) -> None:
    """Frame `t` of a video as `<t>.png`: (H, W) uint16 depth, 0 = no measurement."""
    write_png(folder / f"{t}.png", depth)


def _write_video(root: Path, n: int, folder: str, video: str) -> None:
    """The frames of one fake video, without the depth frames of `MISSING_DEPTH`."""
    rgb_dir, depth_dir = video_folders(root, folder, video, inner_depth=n not in DEPTH_WITHOUT_INNER_FOLDER)
    for t, rgb, depth in render_frames(n, video):
        write_rgb_frame(rgb_dir, t, rgb)
        if (n, video, t) not in MISSING_DEPTH:
            write_depth_frame(depth_dir, t, depth)


def write_annotation(path: Path, rows: Iterable[Sequence[object]]) -> None:
    """The V2 annotation workbook: sheet 'label', the header `COLUMNS`, one row per sequence of
    `COLUMNS` values."""
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "label"
    sheet.append(COLUMNS)
    for row in rows:
        sheet.append(tuple(row))
    book.save(path)


def _write_au_csv(path: Path) -> None:
    """OpenFace layout (', '-separated header); AU01_r steps to 2.5 at EVENT_START, AU02_r = 0.05 t."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["frame, face_id, timestamp, confidence, success, AU01_r, AU02_r, AU04_r, AU01_c"]
    for t in range(1, N_FRAMES + 1):
        au01 = 2.5 if t >= EVENT_START else 0.0
        success = 0 if t == AU_FAILED_FRAME else 1
        lines.append(f"{t}, 0, {t / 30:.3f}, 0.98, {success}, {au01:.2f}, {0.05 * t:.2f}, 0.00, "
                     f"{int(au01 > 1)}")
    path.write_text("\n".join(lines) + "\n")


def build_fake_release(out: str | Path, overwrite: bool = False) -> FakeRelease:
    """Write the fake release under `out` (created; refused when another tool wrote it) and return
    its paths."""
    out = Path(out)
    record = util.claim_folder(out, TOOL, {}, OWNS, overwrite)
    record.start()
    release = FakeRelease(out / "partA", out / "partB", out / ANNOTATION_NAME, out / "boxes.csv",
                          out / "openface")
    boxes = []
    parts = ((release.root, PART_A, PART_A_VIDEOS), (release.part_b, PART_B, PART_B_VIDEOS))
    for root, subjects, videos in parts:
        for n, folder in subjects.items():
            for video in videos:
                _write_video(root, n, folder, video)
                boxes.append((file_subject(n), video, *FACE_BOX))
    write_annotation(release.annotation, ((subject, task, onset, apex, offset, "4+7", 1, emotion)
                                          for subject, task, onset, apex, offset, emotion in ME_ROWS))
    with release.boxes.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("Subject", "Filename", "x", "y", "w", "h"))
        writer.writerows(boxes)
    _write_au_csv(release.au_dir / file_subject(AU_VIDEO[0]) / f"{AU_VIDEO[1]}.csv")
    record.finish()
    return release
