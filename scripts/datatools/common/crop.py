"""The crop of a pair or clip: the face box (OpenCV's Haar cascade), box geometry, cropping and
resizing frames, and the luma of a BGR frame."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from util import UserError

Box = tuple[int, int, int, int]  # x, y, width, height in pixels


@lru_cache(maxsize=1)
def face_detector() -> cv2.CascadeClassifier:
    """OpenCV's bundled frontal-face Haar cascade (loaded once per process); UserError when it
    cannot be loaded."""
    path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    detector = cv2.CascadeClassifier(str(path))
    if detector.empty():
        raise UserError(f"{path}: OpenCV's face detector could not be loaded")
    return detector


def detect_face(gray: np.ndarray, max_side: int = 480) -> Box | None:
    """The largest frontal face in a uint8 (H, W) image, or None.

    Detection runs on a copy whose longer side is at most `max_side` pixels.
    """
    height, width = gray.shape
    scale = min(1.0, max_side / max(height, width))
    small = gray if scale == 1.0 else cv2.resize(gray, (round(width * scale), round(height * scale)),
                                                 interpolation=cv2.INTER_AREA)
    faces = face_detector().detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda f: int(f[2]) * int(f[3]))
    return (int(round(x / scale)), int(round(y / scale)), int(round(w / scale)),
            int(round(h / scale)))


def face_box(bgr: np.ndarray, margin: float, notes: list[tuple[str, str]], where: str) -> Box:
    """The crop box of an (H, W, 3) BGR frame: its largest face squared and widened by `margin` of
    its side on each side (`square_box`), or, when no face is found, the whole frame with a
    ('no_face', ...) note naming `where`."""
    height, width = bgr.shape[:2]
    face = detect_face(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    if face is not None:
        return square_box(face, margin, width, height)
    notes.append(("no_face", f"no face found in {where}: whole frame used"))
    return 0, 0, width, height


def clip_box(box: Box, width: int, height: int) -> Box | None:
    """The part of `box` inside a `width` x `height` frame, or None when nothing is left."""
    x, y, w, h = box
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0


def square_box(box: Box, margin: float, width: int, height: int) -> Box:
    """A square around `box`'s centre, side `max(w, h) * (1 + 2 * margin)`, moved inside the frame.

    The side is capped at the frame's shorter edge.
    """
    x, y, w, h = box
    side = min(max(w, h) * (1.0 + 2.0 * margin), width, height)
    x0 = min(max(x + w / 2.0 - side / 2.0, 0.0), width - side)
    y0 = min(max(y + h / 2.0 - side / 2.0, 0.0), height - side)
    side_px = int(round(side))
    return (min(int(round(x0)), width - side_px), min(int(round(y0)), height - side_px),
            side_px, side_px)


def scale_box(box: Box, from_size: tuple[int, int], to_size: tuple[int, int]) -> Box:
    """Map `box` from a frame of (width, height) `from_size` to one of `to_size`."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    x, y, w, h = box
    return (int(round(x * sx)), int(round(y * sy)), max(1, int(round(w * sx))),
            max(1, int(round(h * sy))))


def crop_resize(image: np.ndarray, box: Box, size: tuple[int, int] | None, nearest: bool = False) -> np.ndarray:
    """Crop (H, W[, C]) `image` to `box` and resize to (width, height) `size` (None: keep), float32.

    Area interpolation when shrinking, bilinear when enlarging, nearest neighbour with `nearest`.
    Resizing is linear, so the resized difference of two crops equals the difference of the
    resized crops.
    """
    x, y, w, h = box
    crop = np.ascontiguousarray(image[y:y + h, x:x + w], dtype=np.float32)
    if size is None or size == (w, h):
        return crop
    shrink = size[0] <= w and size[1] <= h
    method = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(crop, size, interpolation=method)


def output_size(image_size: int) -> tuple[int, int] | None:
    """The (width, height) frames are resized to for `--image_size` (0: None, the crop's own size)."""
    return (image_size, image_size) if image_size else None


def to_gray(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) BGR float -> (H, W) luma float32 (ITU-R BT.601 weights)."""
    return (bgr @ np.array([0.114, 0.587, 0.299], np.float32)).astype(np.float32)
