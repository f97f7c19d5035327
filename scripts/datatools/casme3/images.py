"""Image side of the CAS(ME)^3 preparation: intensity measures and one pair's images.

`process_pair` is what the `--workers` processes run; the planning (annotation, folders, lists,
reports) is in the other modules of `scripts.datatools.casme3`, the crop and the verified reading
of frames in `scripts.datatools.common`.

Every view is encoded by `common.format.encode_difference` (8-bit PNG, no wrap-around)::

    pixel = clip(round(128 + gain * (second - first)), 0, 255)

`first` is the onset frame (or the earlier frame of an unlabeled pair), `second` the apex (or later)
frame, both cropped with one shared box and resized to the output size before subtracting.
`gain` is in grey levels per unit of change: per 8-bit intensity level for RGB (each channel
separately), per raw depth unit for the 16-bit depth (a pixel with no measurement, 0, in either
frame counts as no change). The grey view (`--view RGB_gray`) is the ITU-R 601 luma of the same
cropped, resized RGB frames, differenced and encoded with the RGB gain
(`common.format.encode_gray_difference`): one 8-bit channel.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from scripts.datatools.common.crop import Box, clip_box, crop_resize, face_box, output_size, scale_box, to_gray
from scripts.datatools.common.format import encode_difference, encode_gray_difference, write_png
from scripts.datatools.common.frames import FrameError, read_depth, read_rgb
from scripts.datatools.registration import compensate, estimate_motion

MEASURES = ("mad", "flow", "au")


def depth_difference(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """`second - first` (H, W) float32 in raw depth units; 0 where either frame is 0 (no measurement)."""
    valid = (first > 0) & (second > 0)
    diff = second.astype(np.float32) - first.astype(np.float32)
    return np.where(valid, diff, np.float32(0)).astype(np.float32)


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


def _crop_box(task: PairTask, rgb_first: np.ndarray, notes: list[tuple[str, str]]) -> Box | None:
    """The crop box in RGB pixels for this pair (None: the given box misses the frame)."""
    height, width = rgb_first.shape[:2]
    crop = task.settings.crop
    if crop == "box":
        return clip_box(task.box, width, height)
    if crop == "face":
        return face_box(rgb_first, task.settings.crop_margin, notes, task.rgb_first)
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
    size = output_size(task.settings.image_size)
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
