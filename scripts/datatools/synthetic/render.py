"""Synthetic frames: a subject's onset and apex frames and the difference images of the pair.

The RGB frame is albedo x Lambert shading of the height map; the depth frame is the camera
distance minus the height, in integer millimetres (0 = no measurement), as the 16-bit depth PNGs
of the real database. Both frames carry a head pose (per clip), and the apex adds a tiny head
motion (translation, roll, movement along the optical axis), a lighting flicker and the AU field.
Sensor noise: Gaussian RGB noise (level drawn per clip) with 8-bit quantisation; Gaussian depth
noise, 1 mm quantisation, persistent holes in the hair, flickering holes along the silhouette and
sparse random dropouts. How large the pose, the head motion and the actions are, and how often a
blink joins them, is the dataset's `Regime`; with motion compensation the two frames are
registered (`scripts.datatools.registration`) before they are differenced and measured.

Differences are encoded by `common.format.encode_difference` with `dataset.RGB_GAIN` (RGB, frames
in 0..255) and `dataset.DEPTH_GAIN[bits]` (depth, frames in mm); the grey view is
`common.format.encode_gray_difference` of the RGB frames' difference (luma of apex minus luma of
onset, one 8-bit channel). The depth difference is a plain subtraction, so a hole in one frame only makes
a saturated pixel, as in the real frames.

`render_pair_frames` gives the two frames themselves and the conditions they were rendered under,
`render_between` a frame part-way from onset to apex and `head_motion` the rigid head motion of a
pair, for the raw release (`scripts.datatools.synthetic.raw_release`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dataset import DEPTH_GAIN, LUMA_WEIGHTS, RGB_GAIN
from scripts.datatools.common.format import encode_difference, encode_gray_difference
from scripts.datatools.registration import compensate, estimate_motion
from scripts.datatools.synthetic.face import AU_NAMES, Subject
from scripts.datatools.synthetic.regime import Regime

REFERENCE_SIZE = 72  # image size at which the head-motion amplitudes (px) are stated; they scale with it
BLINK_AMPLITUDE = (1.0, 2.0)  # AU45 units: a blink moves the lid about twice as far as an action


def _bilinear(maps: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """Sample (C, S, S) maps at pixel positions (sx, sy), each (S, S), clamped at the border."""
    size = maps.shape[-1]
    sx = np.clip(sx, 0.0, size - 1.0).ravel()
    sy = np.clip(sy, 0.0, size - 1.0).ravel()
    x0 = np.minimum(np.floor(sx), size - 2)
    y0 = np.minimum(np.floor(sy), size - 2)
    fx, fy = sx - x0, sy - y0
    flat = maps.reshape(maps.shape[0], -1)
    i00 = (y0 * size + x0).astype(np.int32)
    v00, v01 = np.take(flat, i00, axis=1), np.take(flat, i00 + 1, axis=1)
    v10, v11 = np.take(flat, i00 + size, axis=1), np.take(flat, i00 + size + 1, axis=1)
    top = v00 + fx * (v01 - v00)
    low = v10 + fx * (v11 - v10)
    return (top + fy * (low - top)).reshape(maps.shape)


@dataclass(frozen=True)
class _Frame:
    """Per-frame rendering conditions."""

    angle: float
    shift: tuple[float, float]
    dz_mm: float  # head movement towards the camera
    brightness: float


def _render_frame(subj: Subject, frame: _Frame, au_field: np.ndarray | None, rgb_sigma: float,
                  depth_sigma: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One RGB frame (S, S, 3) uint8 and depth frame (S, S) int32 mm (0 = hole).

    The head is rotated by ``frame.angle``, shifted by ``frame.shift`` px and moved
    ``frame.dz_mm`` towards the camera; ``au_field`` (3, S, S) adds the AU displacement dx, dy
    (px) and height change (mm).
    """
    g = subj.geometry
    scale = subj.distance_mm / (subj.distance_mm - frame.dz_mm)
    c, s = math.cos(frame.angle) / scale, math.sin(frame.angle) / scale
    dx = subj.grid[0] - np.float32(g.cx + frame.shift[0])
    dy = subj.grid[1] - np.float32(g.cy + frame.shift[1])
    sx, sy = g.cx + c * dx + s * dy, g.cy - s * dx + c * dy
    if au_field is not None:
        sx, sy = sx - au_field[0], sy - au_field[1]
    m = _bilinear(subj.maps, sx, sy)
    albedo, cover, holes = m[0:3], m[4], m[5]
    height = m[3] + cover * np.float32(frame.dz_mm)
    if au_field is not None:
        height = height + au_field[2]

    gy, gx = np.gradient(height / np.float32(subj.pitch_mm))
    lx, ly, lz = subj.light.astype(np.float32)
    lambert = np.maximum((lz - gx * lx - gy * ly) / np.sqrt(gx * gx + gy * gy + 1.0), 0.0)
    shade = cover * (subj.ambient + subj.diffuse * lambert) + (1.0 - cover) * subj.background_shade
    rgb = albedo * (shade * np.float32(255.0 * subj.exposure * frame.brightness))
    rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(rgb_sigma)
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8).transpose(1, 2, 0)

    noise = rng.standard_normal(height.shape, dtype=np.float32) * np.float32(depth_sigma)
    depth = subj.distance_mm - height + noise
    silhouette = (cover > 0.02) & (cover < 0.98)
    dropout_rate = np.where(silhouette, np.float32(0.35), np.float32(0.002))
    dropout = rng.random(height.shape, dtype=np.float32) < dropout_rate
    valid = (cover >= 0.5) & (holes < 0.5) & ~dropout
    return rgb, np.where(valid, np.rint(depth), 0).astype(np.int32)


def measure_intensity(rgb_onset: np.ndarray, rgb_apex: np.ndarray, face_mask: np.ndarray) -> float:
    """Mean absolute difference of two 8-bit RGB frames (S, S, 3) inside ``face_mask`` (S, S).

    In 0..255 units, averaged over channels and face pixels.
    """
    diff = np.abs(rgb_apex.astype(np.int16) - rgb_onset.astype(np.int16))
    return float(diff[face_mask].mean())


def _draw_coefficients(rng: np.random.Generator, aus: tuple[str, ...]) -> np.ndarray:
    """(n_AU, 2) left/right amplitudes: one intensity per clip, per-AU jitter, asymmetry."""
    coeffs = np.zeros((len(AU_NAMES), 2))
    intensity = float(np.clip(rng.lognormal(0.0, 0.3), 0.45, 1.3))
    for name in aus:
        amp = intensity * rng.uniform(0.8, 1.2)
        if rng.random() < 0.15:
            sides = np.array([1.0, 0.15])[rng.permutation(2)]
        else:
            sides = 1.0 + rng.uniform(-0.2, 0.2, 2)
        coeffs[AU_NAMES.index(name)] = amp * sides
    return coeffs



@dataclass(frozen=True)
class Rendered:
    """A rendered pair: encoded differences, measured intensity, largest AU displacement (px)."""

    rgb: np.ndarray  # (S, S, 3) uint8 encoded difference
    depth: np.ndarray  # (S, S) uint8 / uint16 encoded difference
    gray: np.ndarray  # (S, S) uint8 encoded luma difference
    intensity: float
    max_displacement_px: float


def _encode(rgb0: np.ndarray, rgb1: np.ndarray, depth0: np.ndarray, depth1: np.ndarray,
            depth_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, S, 3) uint8 RGB, (S, S) uint8 / uint16 depth and (S, S) uint8 grey differences of two
    frames."""
    rgb_diff = rgb1.astype(np.float64) - rgb0
    rgb = encode_difference(rgb_diff, RGB_GAIN)
    depth = encode_difference(depth1.astype(np.float64) - depth0, DEPTH_GAIN[depth_bits], depth_bits)
    return rgb, depth, encode_gray_difference(rgb_diff, RGB_GAIN)


def _blink(seed: int, subject: int, stream: int, rate: float) -> float:
    """AU45 amplitude of a pair's blink (positive: eyes closing, negative: opening), 0 for none.

    Drawn from the pair's own nuisance stream ``[seed, 5, subject, stream]``, so a regime without
    blinks draws exactly the numbers the generator drew before blinks existed."""
    if rate <= 0.0:
        return 0.0
    rng = np.random.default_rng([seed, 5, subject, stream])
    if rng.random() >= rate:
        return 0.0
    return float(rng.uniform(*BLINK_AMPLITUDE) * rng.choice((-1.0, 1.0)))


def _luma(rgb: np.ndarray) -> np.ndarray:
    """(S, S) float32 luma of an (S, S, 3) RGB frame, for registration only.

    Not `common.format.luma` (float64): ECC's estimate moves with the last bit of its input, and the
    motion-compensated data of docs/findings/realistic-regime.md were made with this float32 product.
    """
    return rgb.astype(np.float32) @ np.asarray(LUMA_WEIGHTS, np.float32)


@dataclass(frozen=True)
class PairFrames:
    """The onset and apex frames of one pair and the conditions they were rendered under.

    With apex == onset the apex frames are the onset frames and ``apex`` is ``onset``.
    """

    rgb_onset: np.ndarray  # (S, S, 3) uint8 RGB
    depth_onset: np.ndarray  # (S, S) int32 mm, 0 = hole
    rgb_apex: np.ndarray  # (S, S, 3) uint8 RGB
    depth_apex: np.ndarray  # (S, S) int32 mm, 0 = hole
    onset: _Frame
    apex: _Frame
    au_field: np.ndarray | None  # (3, S, S) float32 AU displacement dx, dy (px) and height (mm) at the apex
    rgb_sigma: float
    depth_sigma: float
    blink: float  # AU45 amplitude of the pair's blink, 0 for none

    @property
    def max_displacement_px(self) -> float:
        """Largest AU displacement (px) at the apex, 0 without facial movement."""
        if self.au_field is None:
            return 0.0
        return float(np.sqrt(self.au_field[0] ** 2 + self.au_field[1] ** 2).max())


def render_pair_frames(subj: Subject, stream: int, aus: tuple[str, ...], same_frame: bool, seed: int,
                       regime: Regime = Regime()) -> PairFrames:
    """Render the onset and apex frames of one pair (the frames `render_pair` differences).

    `stream` selects the pair's own random stream ``[seed, 2, subject, stream]``; `aus` move the
    apex (empty: no facial movement) with amplitudes scaled by ``regime.amplitude``; a blink joins
    them at ``regime.blink_rate``; `same_frame` makes apex == onset.
    """
    rng = np.random.default_rng([seed, 2, subj.number, stream])
    px = subj.maps.shape[-1] / REFERENCE_SIZE
    onset = _Frame(angle=math.radians(rng.normal(0.0, regime.roll_jitter_deg)),
                   shift=(rng.normal(0.0, regime.position_jitter_px * px),
                          rng.normal(0.0, regime.position_jitter_px * px)),
                   dz_mm=rng.normal(0.0, regime.scale_jitter_mm), brightness=1.0)
    apex = _Frame(angle=onset.angle + math.radians(rng.normal(0.0, regime.head_roll_deg)),
                  shift=(onset.shift[0] + rng.normal(0.0, regime.head_motion_px * px),
                         onset.shift[1] + rng.normal(0.0, regime.head_motion_px * px)),
                  dz_mm=onset.dz_mm + rng.normal(0.0, regime.head_dz_mm), brightness=1.0 + rng.normal(0.0, 0.003))
    rgb_sigma = float(np.exp(rng.normal(math.log(1.4), 0.12)))
    depth_sigma = rng.uniform(0.35, 0.6)
    rgb0, depth0 = _render_frame(subj, onset, None, rgb_sigma, depth_sigma, rng)
    if same_frame:
        return PairFrames(rgb0, depth0, rgb0, depth0, onset, onset, None, rgb_sigma, depth_sigma, 0.0)
    coeffs = np.zeros((len(AU_NAMES), 2))
    if aus:
        coeffs = _draw_coefficients(rng, aus) * regime.amplitude
    blink = _blink(seed, subj.number, stream, regime.blink_rate)
    if blink:
        coeffs[AU_NAMES.index("AU45")] += blink
    field = None
    if coeffs.any():
        coeffs = coeffs.ravel()
        active = np.nonzero(coeffs)[0]
        flat_basis = subj.basis.reshape(-1, *subj.basis.shape[2:])
        field = np.tensordot(coeffs[active].astype(np.float32), flat_basis[active], axes=1)
    rgb1, depth1 = _render_frame(subj, apex, field, rgb_sigma, depth_sigma, rng)
    return PairFrames(rgb0, depth0, rgb1, depth1, onset, apex, field, rgb_sigma, depth_sigma, blink)


def render_between(subj: Subject, pair: PairFrames, weight: float, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A frame (S, S, 3) uint8 RGB and (S, S) int32 depth (mm) part-way from the pair's onset
    (`weight` 0) to its apex (`weight` 1): pose, lighting and AU field interpolated linearly,
    sensor noise drawn from `rng`."""
    onset, apex = pair.onset, pair.apex
    frame = _Frame(angle=onset.angle + weight * (apex.angle - onset.angle),
                   shift=(onset.shift[0] + weight * (apex.shift[0] - onset.shift[0]),
                          onset.shift[1] + weight * (apex.shift[1] - onset.shift[1])),
                   dz_mm=onset.dz_mm + weight * (apex.dz_mm - onset.dz_mm),
                   brightness=onset.brightness + weight * (apex.brightness - onset.brightness))
    field = None if pair.au_field is None else pair.au_field * np.float32(weight)
    return _render_frame(subj, frame, field, pair.rgb_sigma, pair.depth_sigma, rng)


@dataclass(frozen=True)
class HeadMotion:
    """The rigid head motion between a pair's onset and apex frames."""

    dx_px: float  # translation, px at the rendered size
    dy_px: float
    roll_deg: float
    dz_mm: float  # towards the camera
    mean_px: float  # mean displacement of the face's pixels by all of it (translation, roll, scale)


def _image_positions(subj: Subject, frame: _Frame, points: np.ndarray) -> np.ndarray:
    """Where the head points at canonical pixel positions `points` (2, N) appear in `frame`: (2, N) px.

    The inverse of `_render_frame`'s sampling: canonical = c + R(angle) (p - c - shift) / scale.
    """
    g = subj.geometry
    scale = subj.distance_mm / (subj.distance_mm - frame.dz_mm)
    c, s = math.cos(frame.angle) * scale, math.sin(frame.angle) * scale
    qx, qy = points[0] - g.cx, points[1] - g.cy
    return np.stack([g.cx + frame.shift[0] + c * qx - s * qy, g.cy + frame.shift[1] + s * qx + c * qy])


def head_motion(subj: Subject, pair: PairFrames) -> HeadMotion:
    """The head motion of `pair`; ``mean_px`` averages over the subject's face pixels (`face_mask`)."""
    onset, apex = pair.onset, pair.apex
    ys, xs = np.nonzero(subj.face_mask)
    points = np.stack([xs, ys]).astype(np.float64)
    moved = _image_positions(subj, apex, points) - _image_positions(subj, onset, points)
    return HeadMotion(apex.shift[0] - onset.shift[0], apex.shift[1] - onset.shift[1],
                      math.degrees(apex.angle - onset.angle), apex.dz_mm - onset.dz_mm,
                      float(np.hypot(moved[0], moved[1]).mean()))


def render_pair(subj: Subject, stream: int, aus: tuple[str, ...], same_frame: bool, seed: int,
                depth_bits: int, regime: Regime = Regime(), motion_compensation: bool = False) -> Rendered:
    """Render the onset and apex frames of one pair (`render_pair_frames`) and encode their difference.

    `same_frame` makes apex == onset (an all-zero difference). With `motion_compensation` both
    frames are registered before differencing and measuring.
    """
    pair = render_pair_frames(subj, stream, aus, same_frame, seed, regime)
    rgb0, rgb1, depth0, depth1 = pair.rgb_onset, pair.rgb_apex, pair.depth_onset, pair.depth_apex
    if same_frame:
        return Rendered(*_encode(rgb0, rgb0, depth0, depth0, depth_bits), 0.0, 0.0)
    if motion_compensation:
        motion = estimate_motion(_luma(rgb0), _luma(rgb1))
        rgb0, rgb1 = compensate(rgb0, rgb1, motion)
        depth0, depth1 = compensate(depth0, depth1, motion, holes=True)
    return Rendered(*_encode(rgb0, rgb1, depth0, depth1, depth_bits),
                    measure_intensity(rgb0, rgb1, subj.face_mask), pair.max_displacement_px)
