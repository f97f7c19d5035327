"""Image side of the MEGC2019 preparation: the crop, the apex estimate and one clip's RGB
difference image (`process_clip` is what the `--workers` processes run).

The encoding is the CAS(ME)^3 preparation's, RGB view only (`scripts.datatools.common`): onset
and apex frames read and verified (`common.frames`), cropped with one box, resized to the output
size, subtracted channel by channel and written by `common.format.encode_difference`::

    pixel = clip(round(128 + gain * (apex - onset)), 0, 255)

The box is the largest frontal face OpenCV's Haar cascade finds on the onset frame, squared and
widened by `crop_margin` of its side on each side (`--crop face`), or the whole frame (`--crop
none`, or when no face is found, which is reported). Greyscale frames (SAMM) give three equal
channels.

Apex estimate (SMIC, and CASME II or SAMM rows whose sheet apex is unusable: `ClipTask.apex`
None): among the frames after the first (the onset), the one whose face crop differs most from the
onset's: the mean absolute difference of the grey crops, each resized to `APEX_SIDE` x
`APEX_SIDE` and blurred by a Gaussian of `APEX_SIGMA` pixels; ties go to the earlier frame.
Resizing and blurring keep sensor noise from choosing the frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from scripts.datatools.common.crop import Box, crop_resize, face_box, output_size, to_gray
from scripts.datatools.common.format import encode_difference, write_png
from scripts.datatools.common.frames import FrameError, read_rgb

APEX_SIDE = 64
APEX_SIGMA = 1.0


class ClipError(Exception):
    """A clip that cannot be encoded; `kind` names the reason in the report."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImageSettings:
    """Everything that changes the written images: `crop` 'face' or 'none', `crop_margin` (fraction
    of the face side added on each side), `image_size` (output side; 0 keeps the crop's), `rgb_gain`."""
    crop: str
    crop_margin: float
    image_size: int
    rgb_gain: float


@dataclass(frozen=True)
class ClipTask:
    """One clip to encode: (frame number, path) in frame order, onset first; `apex` the annotated
    apex frame number, or None to estimate it from every frame. The image goes to
    `out_folder/<key>.png`, `key` from `clip_key` once the apex is known."""
    subject: str
    video: str
    frames: tuple[tuple[int, str], ...]
    apex: int | None
    out_folder: str
    settings: ImageSettings


@dataclass(frozen=True)
class ClipResult:
    """Outcome of a `ClipTask`: status 'written' (with key, apex, path) or 'skipped' (kind, reason);
    `notes` are (kind, detail) oddities of a written clip."""
    status: str
    key: str = ""
    apex: int | None = None
    path: str = ""
    kind: str = ""
    reason: str = ""
    notes: tuple[tuple[str, str], ...] = ()


def clip_key(subject: str, video: str, onset: int, apex: int) -> str:
    """Sample key `<subject>-<video>-<apex>-<subject>-<video>-<onset>_diff`: the CAS(ME)^3 naming
    with composite subject names, so keys never collide across databases."""
    return f"{subject}-{video}-{apex}-{subject}-{video}-{onset}_diff"


def crop_box(bgr: np.ndarray, settings: ImageSettings, notes: list[tuple[str, str]], where: str) -> Box:
    """The crop box of a clip in pixels of its (H, W, 3) onset frame."""
    if settings.crop == "face":
        return face_box(bgr, settings.crop_margin, notes, where)
    return 0, 0, bgr.shape[1], bgr.shape[0]


def apex_image(bgr: np.ndarray, box: Box) -> np.ndarray:
    """(APEX_SIDE, APEX_SIDE) float32: the grey face crop of an (H, W, 3) frame, resized and blurred."""
    grey = to_gray(crop_resize(bgr, box, (APEX_SIDE, APEX_SIDE)))
    return cv2.GaussianBlur(grey, (0, 0), APEX_SIGMA)


def estimate_apex(frames: tuple[tuple[int, str], ...], onset: np.ndarray, box: Box) -> int:
    """Frame number of the estimated apex of a clip whose first frame (`onset`, (H, W, 3)) is the
    onset: the later frame whose `apex_image` differs most from the onset's in mean absolute value."""
    reference = apex_image(onset, box)
    best_number, best_score = frames[1][0], -1.0
    for number, path in frames[1:]:
        frame = _read(path)
        if frame.shape != onset.shape:
            raise ClipError("frame_size", f"frame {path} is {frame.shape[1]}x{frame.shape[0]}, the onset frame "
                                          f"{onset.shape[1]}x{onset.shape[0]}")
        score = float(np.mean(np.abs(apex_image(frame, box) - reference)))
        if score > best_score:
            best_number, best_score = number, score
    return best_number


def _read(path: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR frame; ClipError when it cannot be read."""
    try:
        return read_rgb(path)
    except FrameError as err:
        raise ClipError(err.kind, str(err)) from None


def process_clip(task: ClipTask) -> ClipResult:
    """Read the onset frame, find the crop and the apex, write the difference image."""
    notes: list[tuple[str, str]] = []
    onset_number, onset_path = task.frames[0]
    try:
        onset = _read(onset_path)
        box = crop_box(onset, task.settings, notes, onset_path)
        apex_number = task.apex if task.apex is not None else estimate_apex(task.frames, onset, box)
        apex_path = dict(task.frames)[apex_number]
        apex = _read(apex_path)
        if apex.shape != onset.shape:
            raise ClipError("frame_size", f"apex frame {apex_path} and onset frame {onset_path} differ in size")
    except ClipError as err:
        return ClipResult("skipped", kind=err.kind, reason=str(err))
    size = output_size(task.settings.image_size)
    diff = crop_resize(apex, box, size) - crop_resize(onset, box, size)
    key = clip_key(task.subject, task.video, onset_number, apex_number)
    path = Path(task.out_folder) / f"{key}.png"
    # frames are BGR as OpenCV reads them; the PNG holds RGB
    write_png(path, encode_difference(diff, task.settings.rgb_gain)[..., ::-1])
    return ClipResult("written", key, apex_number, str(path), notes=tuple(notes))
