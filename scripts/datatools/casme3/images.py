"""Image side of the CAS(ME)^3 preparation: crop boxes, intensity measures, one pair's images.

`process_pair` is what the `--workers` processes run; the planning (annotation, folders, lists,
reports) is in the other modules of `scripts.datatools.casme3`.

Every view is encoded by `dataset.encode_difference` (8-bit PNG, no wrap-around)::

    pixel = clip(round(128 + gain * (second - first)), 0, 255)

`first` is the onset frame (or the earlier frame of an unlabeled pair), `second` the apex (or later)
frame, both cropped with one shared box and resized to the output size before subtracting.
`gain` is in grey levels per unit of change: per 8-bit intensity level for RGB (each channel
separately), per raw depth unit for the 16-bit depth (a pixel with no measurement, 0, in either
frame counts as no change). The grey view (`--view RGB_gray`) is the ITU-R 601 luma of the same
cropped, resized RGB frames, differenced and encoded with the RGB gain
(`dataset.encode_gray_difference`): one 8-bit channel.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from dataset import encode_difference, encode_gray_difference, write_png
from scripts.datatools.registration import compensate, estimate_motion

MEASURES = ("mad", "flow", "au")
Box = tuple[int, int, int, int]  # x, y, width, height in pixels


class FrameError(Exception):
    """A frame that cannot be used (unreadable, truncated, wrong format); the pair is skipped and
    reported as `kind`."""

    def __init__(self, message: str, kind: str = "unreadable_frame") -> None:
        super().__init__(message)
        self.kind = kind


def depth_difference(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """`second - first` (H, W) float32 in raw depth units; 0 where either frame is 0 (no measurement)."""
    valid = (first > 0) & (second > 0)
    diff = second.astype(np.float32) - first.astype(np.float32)
    return np.where(valid, diff, np.float32(0)).astype(np.float32)


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


@lru_cache(maxsize=1)
def face_detector() -> cv2.CascadeClassifier:
    """OpenCV's bundled frontal-face Haar cascade (loaded once per process)."""
    path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    detector = cv2.CascadeClassifier(str(path))
    if detector.empty():
        raise RuntimeError(f"{path}: OpenCV's face detector could not be loaded")
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


def to_gray(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) BGR float -> (H, W) luma float32 (ITU-R BT.601 weights)."""
    return (bgr @ np.array([0.114, 0.587, 0.299], np.float32)).astype(np.float32)


def mean_abs_difference(first: np.ndarray, second: np.ndarray) -> float:
    """Mean absolute change between two (H, W, 3) frames, in 8-bit levels averaged over channels
    (the measure the synthetic generator writes into its pool lists)."""
    return float(np.mean(np.abs(second - first)))


def flow_magnitude(gray_first: np.ndarray, gray_second: np.ndarray) -> float:
    """Mean Farneback optical-flow magnitude (pixels at the given size) between two (H, W) images."""
    first = np.clip(np.rint(gray_first), 0, 255).astype(np.uint8)
    second = np.clip(np.rint(gray_second), 0, 255).astype(np.uint8)
    flow = cv2.calcOpticalFlowFarneback(first, second, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    return float(np.mean(np.hypot(flow[..., 0], flow[..., 1])))


def intensity_of(measure: str, mad: float | None, flow: float | None, au: float | None) -> float | None:
    """The value of the chosen intensity `measure` ('mad', 'flow' or 'au'); None when unavailable."""
    return {"mad": mad, "flow": flow, "au": au}[measure]


def below(intensity: float | None, threshold: float | None) -> bool:
    """True when a pair fails the pool threshold (a missing intensity fails any threshold)."""
    return threshold is not None and (intensity is None or intensity < threshold)


@dataclass(frozen=True)
class ImageSettings:
    """Everything that changes the written images.

    `crop`: 'face' (Haar cascade on the first RGB frame, squared, `crop_margin` of the side added on
    each side), 'box' (a given box) or 'none' (whole frame). `image_size`: output side in pixels,
    0 keeps the crop's own size. `motion_compensation`: the cropped frames are registered
    (`scripts.datatools.registration`) before they are measured and differenced.
    """
    crop: str
    crop_margin: float
    image_size: int
    rgb_gain: float
    depth_gain: float
    motion_compensation: bool = False


@dataclass(frozen=True)
class PairTask:
    """One difference pair to compute: frame paths (first = onset, second = apex) and outputs
    (the RGB, depth and grey difference images).

    Images are written only when the pair's intensity (`measure`) is at least `min_intensity`
    (None: always). `box` is the given crop box when `settings.crop == 'box'`.
    """
    key: str
    rgb_first: str
    rgb_second: str
    depth_first: str
    depth_second: str
    rgb_out: str
    depth_out: str
    gray_out: str
    settings: ImageSettings
    box: Box | None = None
    measure: str = "mad"
    au_change: float | None = None
    min_intensity: float | None = None


@dataclass(frozen=True)
class PairResult:
    """Outcome of a `PairTask`: status 'written', 'reused', 'dropped' (below threshold) or 'skipped'.

    `kind`/`reason` explain a skip; `notes` are (kind, detail) anomalies met on the way.
    """
    key: str
    status: str
    mad: float | None = None
    flow: float | None = None
    kind: str = ""
    reason: str = ""
    notes: tuple[tuple[str, str], ...] = ()


JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
TAIL_BYTES = 4096  # the end marker is looked for in this many last bytes (after any zero padding)


def jpeg_problem(head: bytes, tail: bytes, path: str) -> str | None:
    """Why a file starting with `head` and ending with `tail` cannot be a whole JPEG frame, or None
    (also None for a file that is not a JPEG: the decoder judges those).

    A JPEG ends with the end-of-image marker FFD9, zero padding after it tolerated. OpenCV
    decodes a truncated file anyway, only warning on stderr, and the missing part comes out grey,
    which would make a plausible but false difference image.
    """
    if head.startswith(JPEG_START) and not tail.rstrip(b"\0").endswith(JPEG_END):
        return f"RGB frame {path} is truncated (no JPEG end marker FFD9)"
    return None


def jpeg_file_problem(path: str) -> str | None:
    """`jpeg_problem` of a file read from its ends only (cheap enough to check every reused pair)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
            handle.seek(max(0, handle.seek(0, 2) - TAIL_BYTES))
            tail = handle.read()
    except OSError as err:
        return f"cannot read RGB frame {path} ({err.strerror})"
    return jpeg_problem(head, tail, path)


def read_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR frame; FrameError when unreadable or a truncated JPEG."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise FrameError(f"cannot read RGB frame {path} ({err.strerror})") from None
    problem = jpeg_problem(data[:2], data[-TAIL_BYTES:], path)
    if problem:
        raise FrameError(problem, "truncated_frame")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise FrameError(f"cannot read RGB frame {path}")
    return image


def read_depth(path: str) -> np.ndarray:
    """(H, W) uint16 (or uint8) raw depth frame."""
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FrameError(f"cannot read depth frame {path}")
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise FrameError(f"depth frame {path} is {image.dtype} with shape {image.shape}, "
                         f"expected a single-channel 16-bit PNG")
    return image


def _crop_box(task: PairTask, rgb_first: np.ndarray, notes: list[tuple[str, str]]) -> Box | None:
    """The crop box in RGB pixels for this pair (None: the given box misses the frame)."""
    height, width = rgb_first.shape[:2]
    crop = task.settings.crop
    if crop == "box":
        return clip_box(task.box, width, height)
    if crop == "face":
        face = detect_face(cv2.cvtColor(rgb_first, cv2.COLOR_BGR2GRAY))
        if face is not None:
            return square_box(face, task.settings.crop_margin, width, height)
        notes.append(("no_face", f"no face found in {task.rgb_first}: whole frame used"))
    return 0, 0, width, height


def process_pair(task: PairTask) -> PairResult:
    """Read the four frames, measure the pair and write its three difference images (if kept)."""
    notes: list[tuple[str, str]] = []
    try:
        rgb_first, rgb_second = read_rgb(task.rgb_first), read_rgb(task.rgb_second)
        depth_first, depth_second = read_depth(task.depth_first), read_depth(task.depth_second)
    except FrameError as err:
        return PairResult(task.key, "skipped", kind=err.kind, reason=str(err))
    if rgb_first.shape != rgb_second.shape or depth_first.shape != depth_second.shape:
        return PairResult(task.key, "skipped", kind="frame_size",
                          reason=f"frame sizes differ between {task.rgb_first} and {task.rgb_second} "
                                 f"or their depth frames")
    box = _crop_box(task, rgb_first, notes)
    if box is None:
        return PairResult(task.key, "skipped", kind="box_outside_frame",
                          reason=f"crop box {task.box} lies outside the frame {task.rgb_first}")
    side = task.settings.image_size
    size = (side, side) if side else None
    first, second = crop_resize(rgb_first, box, size), crop_resize(rgb_second, box, size)
    motion = estimate_motion(to_gray(first), to_gray(second)) if task.settings.motion_compensation else None
    if motion is not None:
        if not motion.converged:
            notes.append(("no_registration", f"{task.rgb_first} and {task.rgb_second} could not be registered: "
                                             f"differenced without motion compensation"))
        first, second = compensate(first, second, motion)
    mad = mean_abs_difference(first, second)
    flow = flow_magnitude(to_gray(first), to_gray(second))
    if below(intensity_of(task.measure, mad, flow, task.au_change), task.min_intensity):
        return PairResult(task.key, "dropped", mad, flow, notes=tuple(notes))

    rgb_size = (rgb_first.shape[1], rgb_first.shape[0])
    depth_size = (depth_first.shape[1], depth_first.shape[0])
    depth_box = box
    if depth_size != rgb_size:
        depth_box = scale_box(box, rgb_size, depth_size)
        notes.append(("depth_size", f"depth frame {task.depth_first} is {depth_size[0]}x{depth_size[1]}, "
                                    f"RGB {rgb_size[0]}x{rgb_size[1]}: crop box scaled"))
    out_size = (first.shape[1], first.shape[0])
    if motion is None:
        depth_diff = crop_resize(depth_difference(depth_first, depth_second), depth_box, out_size)
    else:
        # 0 marks a missing depth value: cropped with nearest neighbours, so that no hole is blended
        # into a measurement before the registration keeps holes out of its interpolation
        depth_diff = depth_difference(*compensate(*(crop_resize(frame, depth_box, out_size, nearest=True)
                                                     for frame in (depth_first, depth_second)), motion, holes=True))
    # frames are BGR as OpenCV reads them; the PNG holds RGB
    rgb_diff = (second - first)[..., ::-1]
    write_png(task.rgb_out, encode_difference(rgb_diff, task.settings.rgb_gain))
    write_png(task.depth_out, encode_difference(depth_diff, task.settings.depth_gain))
    write_png(task.gray_out, encode_gray_difference(rgb_diff, task.settings.rgb_gain))
    return PairResult(task.key, "written", mad, flow, notes=tuple(notes))


def init_worker() -> None:
    """Pool initializer: one OpenCV thread per worker process (the processes give the parallelism)."""
    cv2.setNumThreads(1)
