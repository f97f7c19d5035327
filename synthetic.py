"""Synthetic CAS(ME)^3-like micro-expression data, written in the real DVSCL layout.

Every subject (``spNO.<n>`` in file names, ``spNO<n>`` in list names) gets its own face: face
shape, eye / brow / nose / mouth geometry, skin tone and texture, hair, lighting direction, camera
distance and a small pose offset (roll, yaw, position). The face is rendered from a per-subject
albedo map and a registered height map (head ellipsoid, nose, brow ridge, eye sockets, cheeks, lips,
chin); the RGB frame is albedo x Lambert shading of the height map, the depth frame is the camera
distance minus the height, in integer millimetres (0 = no measurement), as the 16-bit depth PNGs of
the real database.

A sample is an onset frame and an apex frame. The apex differs from the onset by AU-like
deformations: localised smooth displacement fields (skin, brows, lids and lips move) plus local
height changes (bulges, furrows, dimples) that also change the shading. Amplitudes are those of
micro-expressions: about one pixel of displacement at 72 px, about three at the most (scaled with
the image size; the summary reports the largest). Both frames carry a head pose (per clip), and
the apex adds a tiny head motion (translation, roll, movement along the optical axis) and a
lighting flicker. Sensor noise: Gaussian
RGB noise (level drawn per clip) with 8-bit quantisation; Gaussian depth noise, 1 mm quantisation,
persistent holes in the hair, flickering holes along the silhouette and sparse random dropouts.

Classes (4-class labels 0 negative, 1 others, 2 positive, 3 surprise; 3-class drops others and
renumbers 0 negative, 1 positive, 2 surprise) are carried by AU patterns with intra-class variation
(AU subset, amplitude, left/right asymmetry), see ``CLASS_PATTERNS``. Class shares follow the
CAS(ME)^3 test-list totals (``CASME3_TEST_COUNTS``); per-subject sample counts are heavy-tailed; a
share of labeled samples has apex == onset (an all-zero difference), as 62 of the 943 published
samples do; and a share ``label_noise`` carries the AU pattern of another class than its label, as
self-reported emotions are noisy.

Difference images (apex minus onset), signed around mid-grey:

- RGB, 8-bit, 3 channels: ``clip(round(128 + RGB_GAIN * (apex - onset)), 0, 255)``, frames in
  0..255, ``RGB_GAIN = 2``.
- Depth, 8-bit, 1 channel: ``clip(round(128 + DEPTH_GAIN_8 * (apex - onset)), 0, 255)``, frames in
  mm, ``DEPTH_GAIN_8 = 16`` grey levels per mm (saturates at +-8 mm).
- Depth, 16-bit (``depth_bits=16``): ``clip(round(32768 + DEPTH_GAIN_16 * (apex - onset)), 0,
  65535)``, ``DEPTH_GAIN_16 = 64`` per mm (saturates at +-512 mm).

A hole in one frame only (depth 0) makes a saturated pixel in the depth difference, as a plain
subtraction of the real frames does.

The unlabeled pre-training pool holds pairs of the labeled subjects and of ``pool_only_subjects``
extra subjects (as CAS(ME)^3 part B). A share ``low_intensity_share`` of them has no AU at all (noise,
head motion and flicker only); the others carry 1-3 random AUs. Its intensity column is measured,
not the hidden truth: the mean absolute RGB difference of the two 8-bit frames (0..255 units,
averaged over channels) inside the face region. A threshold separates most noise-only pairs from AU
pairs, not all. ``casme3_pool/ground_truth.csv`` holds the truth (``has_motion``, AU list).

Generation is deterministic: the same arguments give byte-identical files (every pair has its own
random stream, keyed by seed, subject and index). The output folder holds a marker
``synthetic_casme3.json`` (generator, arguments, counts); a non-empty folder without it is never
written into, and regenerating into a marked folder first removes only what the generator owns
(``OWNED_ENTRIES``).

Public API: ``generate_dataset``, ``measure_intensity``, ``encode_rgb_diff``, ``encode_depth_diff``,
``SyntheticError`` and the module constants. Needs numpy only.
"""
from __future__ import annotations

import json
import math
import shutil
import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

CLASS_NAMES_4 = ("negative", "others", "positive", "surprise")
CLASS_NAMES_3 = ("negative", "positive", "surprise")
CASME3_TEST_COUNTS = {"negative": 508, "others": 170, "positive": 64, "surprise": 201}

RGB_GAIN = 2.0
DEPTH_GAIN_8 = 16.0
DEPTH_GAIN_16 = 64.0

MARKER_NAME = "synthetic_casme3.json"
GENERATOR_ID = "dvscl-synthetic-casme3-1"
OWNED_ENTRIES = ("casme3_diff_me4", "casme3_pool", "data", MARKER_NAME)
RGB_DIR = "casme3_diff_me4/casme3_diff_imgs_all"
DEPTH_DIR = "casme3_diff_me4/casme3_diff_depth_all"
POOL_DIR = "casme3_pool"

AU_NAMES = ("AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12", "AU14", "AU15", "AU17",
            "AU26", "AU45")

# class -> patterns (weight, AUs always present, AUs present with probability 1/2)
CLASS_PATTERNS: dict[str, tuple[tuple[float, tuple[str, ...], tuple[str, ...]], ...]] = {
    "negative": ((0.30, ("AU4",), ("AU7",)),
                 (0.20, ("AU4", "AU15"), ()),
                 (0.20, ("AU9",), ("AU10", "AU4")),
                 (0.15, ("AU15",), ("AU17",)),
                 (0.15, ("AU10",), ("AU4",))),
    "others": ((0.35, ("AU14",), ()),
               (0.35, ("AU45",), ()),
               (0.30, ("AU17",), ("AU14",))),
    "positive": ((0.70, ("AU12", "AU6"), ()),
                 (0.30, ("AU12",), ())),
    "surprise": ((0.50, ("AU1", "AU2"), ("AU5", "AU26")),
                 (0.30, ("AU1", "AU2", "AU26"), ()),
                 (0.20, ("AU26",), ("AU5",))),
}

VIDEOS = "abcdefghijklm"
FACE_HALF_WIDTH_MM = 75.0
REFERENCE_SIZE = 72  # image size at which the head-motion amplitudes (px) are stated; they scale with it
POOL_INDEX_OFFSET = 1_000_000  # per-sample random streams: labeled i -> i, pool j -> offset + j


class SyntheticError(ValueError):
    """Bad argument or unusable output folder; the message is one line."""


@dataclass(frozen=True)
class _Geometry:
    """A subject's face layout. Pixels for the frame; face-normalised units (u, v) for features.

    u runs right, v down; the face ellipse is u^2 + v^2 <= 1 with half-axes ``a`` (u) and ``b``
    (v) pixels, centred at (cx, cy) and rolled by ``roll`` radians. Internal features are shifted
    by ``yaw`` in u.
    """

    cx: float
    cy: float
    a: float
    b: float
    roll: float
    yaw: float
    ex: float  # eye centre |u|
    ey: float  # eye centre v
    ew: float  # eye half-width
    eh: float  # eye half-height
    by: float  # brow v
    bw: float  # brow half-length
    bt: float  # brow thickness
    arch: float
    ny: float  # nose tip v
    nw: float  # nose half-width
    my: float  # mouth line v
    mw: float  # mouth half-width (lip corner |u|)
    ut: float  # upper lip thickness
    lt: float  # lower lip thickness
    hairline: float
    gaze: float


@dataclass(frozen=True)
class _Subject:
    """A rendered subject: canonical maps, AU basis, camera and light."""

    number: int
    geometry: _Geometry
    maps: np.ndarray  # (6, S, S) float32: albedo r, g, b (0..1), height mm, head cover, hole score
    face_mask: np.ndarray  # (S, S) bool: skin region used to measure intensity
    basis: np.ndarray  # (len(AU_NAMES), 2 sides, 3 [dx px, dy px, dz mm], S, S) float32
    grid: np.ndarray  # (2, S, S) float32: pixel x, y
    light: np.ndarray  # (3,) unit vector towards the light
    ambient: float
    diffuse: float
    background_shade: float
    exposure: float
    distance_mm: float
    pitch_mm: float  # millimetres per pixel on the face


class _PoolRow(NamedTuple):
    """A rendered pool pair as it goes into the lists and the ground truth."""

    key: str
    rgb_path: str
    depth_path: str
    intensity: float
    aus: tuple[str, ...]


class _Component(NamedTuple):
    """One Gaussian patch of an AU: centre, spread (face units), displacement (face units), dz mm.

    Bilateral components sit at +-u (du counts outward); central ones at u and add half to each
    side.
    """

    u: float
    v: float
    su: float
    sv: float
    du: float
    dv: float
    dz: float
    bilateral: bool


@dataclass(frozen=True)
class _Plan:
    """One pair to render: where it goes and what it carries."""

    index: int  # per-subject random stream: labeled samples 0.., pool pairs POOL_INDEX_OFFSET + j
    key: str  # file stem, e.g. spNO.3-b-120-spNO.3-b-114_diff
    rgb_path: str
    depth_path: str
    label: int  # -1 for pool pairs
    aus: tuple[str, ...]  # empty: no facial movement
    same_frame: bool  # apex == onset: an all-zero difference


def _cover(signed_px: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a shape from its signed distance in pixels (negative inside)."""
    return np.clip(0.5 - signed_px, 0.0, 1.0)


def _band(dist_px: np.ndarray, half_width_px: float | np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a band of the given half-width around a curve."""
    return np.clip(half_width_px - np.abs(dist_px) + 0.5, 0.0, 1.0)


def _gauss(u: np.ndarray, v: np.ndarray, u0: float, v0: float, su: float, sv: float) -> np.ndarray:
    return np.exp(-0.5 * (((u - u0) / su) ** 2 + ((v - v0) / sv) ** 2))


def _blend(color: np.ndarray, over: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha-blend ``over`` ((3,) or (S, S, 3)) onto ``color`` (S, S, 3) with alpha (S, S)."""
    return color + alpha[..., None] * (over - color)


def _smooth_field(rng: np.random.Generator, size: int, scale_px: float) -> np.ndarray:
    """(size, size) Gaussian random field with correlation length ``scale_px``, unit std."""
    white = rng.standard_normal((size, size))
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    spectrum = np.fft.rfft2(white) * np.exp(-2.0 * (math.pi * scale_px) ** 2 * (fx**2 + fy**2))
    field = np.fft.irfft2(spectrum, s=(size, size))
    return (field - field.mean()) / (field.std() + 1e-12)


def _draw_geometry(rng: np.random.Generator, size: int) -> _Geometry:
    a = size * rng.uniform(0.38, 0.43)
    ey = rng.uniform(-0.22, -0.12)
    ew = rng.uniform(0.14, 0.19)
    return _Geometry(
        cx=(size - 1) / 2 + size * rng.uniform(-0.03, 0.03),
        cy=(size - 1) / 2 + size * rng.uniform(0.0, 0.05),
        a=a, b=a * rng.uniform(1.18, 1.30),
        roll=math.radians(rng.uniform(-5.0, 5.0)), yaw=rng.uniform(-0.06, 0.06),
        ex=rng.uniform(0.36, 0.44), ey=ey, ew=ew, eh=ew * rng.uniform(0.38, 0.5),
        by=ey - rng.uniform(0.14, 0.20), bw=rng.uniform(0.17, 0.23), bt=rng.uniform(0.035, 0.06),
        arch=rng.uniform(0.0, 0.05),
        ny=rng.uniform(0.18, 0.28), nw=rng.uniform(0.09, 0.13),
        my=rng.uniform(0.46, 0.54), mw=rng.uniform(0.22, 0.30),
        ut=rng.uniform(0.05, 0.075), lt=rng.uniform(0.06, 0.09),
        hairline=rng.uniform(-0.80, -0.62), gaze=rng.uniform(-0.25, 0.25),
    )


def _face_coords(g: _Geometry, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Face-normalised coordinates (u, v) of every pixel, each (S, S)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = x - g.cx, y - g.cy
    c, s = math.cos(g.roll), math.sin(g.roll)
    return (c * dx + s * dy) / g.a, (-s * dx + c * dy) / g.b


def _render_canonical(g: _Geometry, size: int, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Albedo, height, cover and hole maps (6, S, S) float32 and the face mask (S, S) bool."""
    u, v = _face_coords(g, size)
    uf = u - g.yaw
    au = np.abs(uf)
    a, b = g.a, g.b

    face = _cover((np.hypot(u, v) - 1.0) * a)
    q_head = np.hypot(u / 1.1, (v + 0.05) / 1.12)
    head = _cover((q_head - 1.0) * a)
    above_hairline = _cover((v - (g.hairline + 0.35 * uf**2)) * b)
    skin = face * (1.0 - above_hairline)
    hair = face * above_hairline + head * (1.0 - face) * _cover((v - 0.25) * b)
    background = np.clip(1.0 - skin - hair, 0.0, 1.0)

    tone = rng.uniform(0.0, 1.0)
    skin_rgb = (np.array([0.92, 0.76, 0.64]) * (1 - tone) + np.array([0.55, 0.38, 0.28]) * tone)
    skin_rgb = skin_rgb * (1.0 + rng.normal(0.0, 0.03, 3))
    texture = (0.05 * _smooth_field(rng, size, size / 24) + 0.025 * _smooth_field(rng, size, size / 90))
    color = skin_rgb[None, None, :] * (1.0 + texture[..., None])
    cheeks = _gauss(au, v, 0.5, 0.2, 0.16, 0.12)
    color = color + (cheeks * 0.05)[..., None] * np.array([1.0, -0.3, -0.3])

    # lips and the seam between them
    corner = np.clip(1.0 - (uf / g.mw) ** 2, 0.0, 1.0)
    inside_mouth = _cover((au - g.mw) * a)
    top = g.my - g.ut * corner ** 0.5 * (1.0 - 0.3 * _gauss(uf, v, 0.0, g.my, 0.05, 1.0))
    bottom = g.my + g.lt * corner ** 0.5
    lip = inside_mouth * np.clip(np.minimum(v - top, bottom - v) * b + 0.5, 0.0, 1.0)
    color = _blend(color, skin_rgb * np.array([0.8, 0.45, 0.45]), lip)
    line_px = max(0.5, 0.015 * a)  # half-width of thin dark lines: seam, lash line
    seam = _band((v - g.my) * b, 1.2 * line_px) * _cover((au - g.mw - 0.03) * a)
    color = _blend(color, skin_rgb * 0.25, seam)

    # brows: thicker at the inner end, tapered at both ends
    hair_rgb = np.array([0.12, 0.09, 0.07]) * rng.uniform(0.7, 1.4)
    along = au - g.ex  # positive outward
    curve = g.by - g.arch * (1.0 - (along / g.bw) ** 2) + 0.05 * along
    thickness = g.bt * (1.0 - 0.4 * (along + g.bw) / (2 * g.bw)) * b
    brow = _band((v - curve) * b, thickness / 2) * _cover((np.abs(along) - g.bw) * a)
    color = _blend(color, hair_rgb, 0.85 * brow)

    # eyes: sclera, iris and pupil, upper lash line
    eye_q = np.hypot((au - g.ex) / g.ew, (v - g.ey) / g.eh)
    eye_r_px = min(g.ew * a, g.eh * b)
    eye = _cover((eye_q - 1.0) * eye_r_px)
    color = _blend(color, np.array([0.86, 0.83, 0.80]), eye)
    iris_d = np.hypot((au - g.ex - g.gaze * g.ew * 0.3) * a, (v - g.ey) * b)
    iris_px = 0.95 * g.eh * b
    iris_rgb = np.array([0.25, 0.16, 0.10]) * rng.uniform(0.6, 1.2)
    color = _blend(color, iris_rgb, eye * _cover(iris_d - iris_px))
    color = _blend(color, np.array([0.04, 0.03, 0.03]), eye * _cover(iris_d - 0.45 * iris_px))
    lash = _band((eye_q - 1.0) * eye_r_px, line_px) * (v < g.ey) * _cover((au - g.ex - g.ew) * a)
    color = _blend(color, hair_rgb, 0.9 * lash)

    # nostrils
    nostril = _cover((np.hypot((au - 0.55 * g.nw) / 0.045, (v - g.ny - 0.02) / 0.025) - 1.0) * 0.025 * b)
    color = _blend(color, skin_rgb * 0.35, nostril)

    # soft creases: nasolabial folds (nose wing to beyond the lip corner), chin crease, lower lid
    t = np.clip((v - g.ny) / (g.my + 0.08 - g.ny), 0.0, 1.0)
    fold_u = g.nw + 0.04 + (g.mw + 0.06 - g.nw - 0.04) * t
    fold = np.exp(-0.5 * ((au - fold_u) / 0.018) ** 2) * _gauss(uf, v, 0.0, (g.ny + g.my) / 2, 1.0, 0.2)
    color = _blend(color, skin_rgb * 0.7, 0.6 * fold)
    chin_v = g.my + g.lt + 0.1 + 0.3 * uf**2
    chin = np.exp(-0.5 * ((v - chin_v) / 0.015) ** 2) * _gauss(uf, v, 0.0, 0.0, 0.14, 9.0)
    color = _blend(color, skin_rgb * 0.75, 0.6 * chin)
    lid_q = np.hypot((au - g.ex) / (1.1 * g.ew), (v - g.ey) / (1.8 * g.eh))
    color = _blend(color, skin_rgb * 0.8, 0.5 * np.exp(-0.5 * ((lid_q - 1.0) / 0.12) ** 2) * (v > g.ey))

    hair_texture = 1.0 + 0.15 * _smooth_field(rng, size, size / 60)
    wall = np.array([0.55, 0.57, 0.60]) * rng.uniform(0.7, 1.2) * (1.0 + rng.normal(0.0, 0.05, 3))
    y = np.arange(size, dtype=np.float64)[:, None, None] / size
    albedo = (skin[..., None] * color + hair[..., None] * hair_rgb * hair_texture[..., None]
              + background[..., None] * wall * (1.05 - 0.1 * y))

    # height above the face plane, mm (0 outside the head)
    height = 95.0 * np.sqrt(np.clip(1.0 - q_head**2, 0.0, 1.0))
    nose_ramp = np.clip((v - (g.ey - 0.05)) / (g.ny - g.ey + 0.05), 0.0, 1.0) * (v < g.ny + 0.05)
    features = (
        rng.uniform(18.0, 26.0) * nose_ramp**1.5 * np.exp(-0.5 * (uf / (0.05 + 0.6 * g.nw * nose_ramp)) ** 2)
        + rng.uniform(4.0, 7.0) * _gauss(uf, v, 0.0, g.ny, 0.07, 0.06)
        + rng.uniform(4.0, 8.0) * _gauss(uf, v, 0.0, g.by + 0.03, 0.55, 0.07)
        - rng.uniform(7.0, 11.0) * _gauss(au, v, g.ex, g.ey, 0.16, 0.10)
        + 3.0 * _gauss(au, v, g.ex, g.ey, g.ew * 0.7, g.eh * 0.8)
        + rng.uniform(3.0, 6.0) * _gauss(au, v, 0.5, 0.15, 0.16, 0.14)
        + 4.0 * _gauss(uf, v, 0.0, g.my, 0.28, 0.07)
        + 4.0 * _gauss(uf, v, 0.0, 0.82, 0.2, 0.1)
    )
    height = head * (height + face * features)

    holes = hair * (1.0 / (1.0 + np.exp(-4.0 * (_smooth_field(rng, size, size / 30) - 0.3))))
    maps = np.stack([albedo[..., 0], albedo[..., 1], albedo[..., 2], height, skin + hair, holes])
    return maps.astype(np.float32), skin > 0.5


def _au_components(g: _Geometry) -> dict[str, tuple[_Component, ...]]:
    """Patches of every AU for one face, per unit amplitude (about 1 px at 72 px)."""
    def bi(u: float, v: float, su: float, sv: float, du: float, dv: float, dz: float) -> _Component:
        return _Component(u, v, su, sv, du, dv, dz, True)

    def mid(u: float, v: float, su: float, sv: float, du: float, dv: float, dz: float) -> _Component:
        return _Component(u, v, su, sv, du, dv, dz, False)

    ex, ey, ew, eh, by, bw, ny, my, mw = g.ex, g.ey, g.ew, g.eh, g.by, g.bw, g.ny, g.my, g.mw
    return {
        "AU1": (bi(ex - 0.6 * bw, by, 0.10, 0.09, 0.0, -0.028, 0.0),
                bi(0.15, by - 0.22, 0.14, 0.05, 0.0, -0.012, 1.5)),
        "AU2": (bi(ex + 0.6 * bw, by, 0.10, 0.09, 0.0, -0.028, 0.0),
                bi(ex + 0.3, by - 0.22, 0.12, 0.05, 0.0, -0.010, 1.2)),
        "AU4": (bi(ex - 0.5 * bw, by + 0.01, 0.11, 0.09, -0.015, 0.03, 0.0),
                bi(0.1, by + 0.03, 0.06, 0.07, 0.0, 0.0, 2.0),
                bi(0.035, by + 0.07, 0.02, 0.07, 0.0, 0.0, -1.5)),
        "AU5": (bi(ex, ey - 0.6 * eh, ew * 0.8, eh * 0.8, 0.0, -0.025, 0.0),),
        "AU6": (bi(ex + 0.02, ey + 0.24, 0.14, 0.09, 0.0, -0.03, 2.5),
                bi(ex, ey + eh, ew * 0.8, 0.04, 0.0, -0.02, 0.0)),
        "AU7": (bi(ex, ey + 0.8 * eh, ew * 0.8, 0.045, 0.0, -0.025, 1.0),
                bi(ex, ey - 0.8 * eh, ew * 0.8, 0.04, 0.0, 0.01, 0.0)),
        "AU9": (bi(0.08, ny - 0.12, 0.05, 0.09, 0.0, -0.04, 0.0),
                mid(0.0, ny - 0.3, 0.06, 0.05, 0.0, 0.0, 2.0),
                mid(0.0, my - 0.06, 0.12, 0.05, 0.0, -0.02, 0.0)),
        "AU10": (bi(0.11, my - 0.05, 0.11, 0.06, 0.0, -0.03, 0.0),
                 bi(mw + 0.02, my - 0.15, 0.05, 0.1, 0.0, 0.0, -1.5)),
        "AU12": (bi(mw, my, 0.09, 0.07, 0.025, -0.025, 0.0),
                 bi(mw + 0.08, my - 0.14, 0.10, 0.10, 0.0, -0.01, 2.2)),
        "AU14": (bi(mw, my, 0.06, 0.06, -0.045, 0.0, 0.0),
                 bi(mw + 0.05, my, 0.05, 0.06, 0.0, 0.0, -2.5)),
        "AU15": (bi(mw, my + 0.02, 0.09, 0.08, 0.0, 0.03, 0.0),
                 bi(mw + 0.03, my + 0.1, 0.07, 0.07, 0.0, 0.01, 1.2)),
        "AU17": (mid(0.0, my + 0.3, 0.18, 0.09, 0.0, -0.035, 2.5),
                 mid(0.0, my + 0.07, 0.15, 0.05, 0.0, -0.03, 1.0)),
        "AU26": (mid(0.0, my + 0.28, 0.34, 0.2, 0.0, 0.032, -1.0),
                 mid(0.0, my + 0.06, 0.22, 0.05, 0.0, 0.025, 0.0)),
        "AU45": (bi(ex, ey - 0.5 * eh, ew * 0.8, eh * 0.9, 0.0, 0.035, 0.0),),
    }


def _au_basis(g: _Geometry, size: int) -> np.ndarray:
    """Displacement (px) and height (mm) fields of every AU and side: (n_AU, 2, 3, S, S) float32."""
    u, v = _face_coords(g, size)
    c, s = math.cos(g.roll), math.sin(g.roll)
    basis = np.zeros((len(AU_NAMES), 2, 3, size, size), dtype=np.float32)
    components = _au_components(g)
    for k, name in enumerate(AU_NAMES):
        for comp in components[name]:
            placements = ((0, -1.0, 1.0), (1, 1.0, 1.0)) if comp.bilateral else ((0, 1.0, 0.5), (1, 1.0, 0.5))
            for side, mirror, weight in placements:
                w = weight * _gauss(u, v, g.yaw + mirror * comp.u, comp.v, comp.su, comp.sv)
                du, dv = mirror * comp.du * g.a, comp.dv * g.b
                basis[k, side, 0] += w * (c * du - s * dv)
                basis[k, side, 1] += w * (s * du + c * dv)
                basis[k, side, 2] += w * comp.dz
    return basis


def _make_subject(seed: int, number: int, size: int) -> _Subject:
    rng = np.random.default_rng([seed, 1, number])
    g = _draw_geometry(rng, size)
    maps, face_mask = _render_canonical(g, size, rng)
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.5, 0.1), 1.0])
    light /= np.linalg.norm(light)
    ambient = rng.uniform(0.3, 0.45)
    return _Subject(
        number=number, geometry=g, maps=maps, face_mask=face_mask, basis=_au_basis(g, size),
        grid=np.mgrid[0:size, 0:size][::-1].astype(np.float32),
        light=light, ambient=ambient, diffuse=(1.0 - ambient) / light[2],
        background_shade=rng.uniform(0.75, 0.95), exposure=rng.uniform(0.8, 1.0),
        distance_mm=rng.uniform(620.0, 760.0), pitch_mm=FACE_HALF_WIDTH_MM / g.a,
    )


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


def _render_frame(subj: _Subject, frame: _Frame, au_field: np.ndarray | None, rgb_sigma: float,
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


def encode_rgb_diff(rgb_onset: np.ndarray, rgb_apex: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8: ``clip(round(128 + RGB_GAIN * (apex - onset)), 0, 255)``."""
    diff = rgb_apex.astype(np.float32) - rgb_onset.astype(np.float32)
    return np.clip(np.rint(128.0 + RGB_GAIN * diff), 0, 255).astype(np.uint8)


def encode_depth_diff(depth_onset: np.ndarray, depth_apex: np.ndarray, bits: int) -> np.ndarray:
    """(S, S) uint8 (bits 8) or uint16 (bits 16) signed depth difference, see the module doc."""
    diff = depth_apex.astype(np.float32) - depth_onset.astype(np.float32)
    if bits == 8:
        return np.clip(np.rint(128.0 + DEPTH_GAIN_8 * diff), 0, 255).astype(np.uint8)
    return np.clip(np.rint(32768.0 + DEPTH_GAIN_16 * diff), 0, 65535).astype(np.uint16)


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


def _draw_class_aus(rng: np.random.Generator, class_name: str) -> tuple[str, ...]:
    patterns = CLASS_PATTERNS[class_name]
    weights = np.array([p[0] for p in patterns])
    _, required, optional = patterns[rng.choice(len(patterns), p=weights / weights.sum())]
    return required + tuple(name for name in optional if rng.random() < 0.5)


@dataclass(frozen=True)
class _Rendered:
    rgb: np.ndarray  # (S, S, 3) uint8 encoded difference
    depth: np.ndarray  # (S, S) uint8 / uint16 encoded difference
    intensity: float
    max_displacement_px: float


def _render_pair(subj: _Subject, plan: _Plan, seed: int, depth_bits: int) -> _Rendered:
    """Render the onset and apex frames of one planned pair and encode their difference."""
    rng = np.random.default_rng([seed, 2, subj.number, plan.index])
    px = subj.maps.shape[-1] / REFERENCE_SIZE
    onset = _Frame(angle=math.radians(rng.normal(0.0, 1.0)),
                   shift=(rng.normal(0.0, 0.6 * px), rng.normal(0.0, 0.6 * px)),
                   dz_mm=rng.normal(0.0, 3.0), brightness=1.0)
    apex = _Frame(angle=onset.angle + math.radians(rng.normal(0.0, 0.06)),
                  shift=(onset.shift[0] + rng.normal(0.0, 0.05 * px),
                         onset.shift[1] + rng.normal(0.0, 0.05 * px)),
                  dz_mm=onset.dz_mm + rng.normal(0.0, 0.3), brightness=1.0 + rng.normal(0.0, 0.003))
    rgb_sigma = float(np.exp(rng.normal(math.log(1.4), 0.12)))
    depth_sigma = rng.uniform(0.35, 0.6)
    rgb0, depth0 = _render_frame(subj, onset, None, rgb_sigma, depth_sigma, rng)
    if plan.same_frame:
        return _Rendered(encode_rgb_diff(rgb0, rgb0), encode_depth_diff(depth0, depth0, depth_bits), 0.0, 0.0)
    field = None
    if plan.aus:
        coeffs = _draw_coefficients(rng, plan.aus).ravel()
        active = np.nonzero(coeffs)[0]
        flat_basis = subj.basis.reshape(-1, *subj.basis.shape[2:])
        field = np.tensordot(coeffs[active].astype(np.float32), flat_basis[active], axes=1)
    rgb1, depth1 = _render_frame(subj, apex, field, rgb_sigma, depth_sigma, rng)
    max_disp = 0.0 if field is None else float(np.sqrt(field[0] ** 2 + field[1] ** 2).max())
    return _Rendered(encode_rgb_diff(rgb0, rgb1), encode_depth_diff(depth0, depth1, depth_bits),
                     measure_intensity(rgb0, rgb1, subj.face_mask), max_disp)


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into integer parts proportional to ``weights``."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _key(subject: str, video: str, second: int, first: int) -> str:
    return f"{subject}-{video}-{second}-{subject}-{video}-{first}_diff"


def _draw_frames(rng: np.random.Generator, used: set[tuple[str, int, int]], same_frame: bool
                 ) -> tuple[str, int, int]:
    """A video letter and (later, earlier) frame numbers not used before for this subject."""
    while True:
        video = VIDEOS[rng.integers(len(VIDEOS))]
        first = int(rng.integers(30, 4000))
        gap = 0 if same_frame else int(np.clip(round(rng.lognormal(math.log(6.0), 0.5)), 1, 30))
        choice = (video, first + gap, first)
        if choice not in used:
            used.add(choice)
            return choice


def _validate(args: dict) -> None:
    """Raise SyntheticError for arguments outside what the generator supports."""
    if args["n_subjects"] < 2:
        raise SyntheticError(f"n_subjects must be at least 2 (LOSO), got {args['n_subjects']}")
    if args["pool_only_subjects"] < 0 or args["n_subjects"] + args["pool_only_subjects"] > 217:
        raise SyntheticError("n_subjects + pool_only_subjects must be within 2..217 (spNO.1 to spNO.217)")
    if args["samples_per_subject"] < 1 or args["pool_per_subject"] < 0:
        raise SyntheticError("samples_per_subject must be >= 1 and pool_per_subject >= 0")
    if args["image_size"] < 32:
        raise SyntheticError(f"image_size must be at least 32, got {args['image_size']}")
    if args["n_classes"] not in (3, 4):
        raise SyntheticError(f"n_classes must be 3 or 4, got {args['n_classes']}")
    if args["depth_bits"] not in (8, 16):
        raise SyntheticError(f"depth_bits must be 8 or 16, got {args['depth_bits']}")
    for name in ("low_intensity_share", "apex_equals_onset_share", "label_noise"):
        if not 0.0 <= args[name] <= 1.0:
            raise SyntheticError(f"{name} must be within [0, 1], got {args[name]}")


def _prepare_out_dir(out: Path, arguments: dict) -> None:
    """Refuse foreign non-empty folders; clear what an earlier run owned; mark the folder."""
    if out.exists() and not out.is_dir():
        raise SyntheticError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        marker = out / MARKER_NAME
        try:
            owned = json.loads(marker.read_text()).get("generator") == GENERATOR_ID
        except (OSError, ValueError, AttributeError):
            owned = False
        if not owned:
            raise SyntheticError(f"{out} is not empty and is not a synthetic CAS(ME)^3 output "
                                 f"(no {MARKER_NAME}): refusing to write into it")
        for name in OWNED_ENTRIES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / MARKER_NAME, {"generator": GENERATOR_ID, "complete": False, "arguments": arguments})


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _png_bytes(array: np.ndarray) -> bytes:
    """PNG file bytes of an (S, S) uint8 / uint16 grey or (S, S, 3) uint8 RGB image.

    Rows unfiltered, zlib level 1: on noise-like difference images this is as small as Pillow's
    adaptive filtering and about three times faster to write.
    """
    height, width = array.shape[:2]
    color_type = 2 if array.ndim == 3 else 0
    bit_depth = 16 if array.dtype == np.uint16 else 8
    rows = array.astype(">u2" if bit_depth == 16 else np.uint8).reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 1))
            + chunk(b"IEND", b""))


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(array))


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def _other_order(rng: np.random.Generator, lines: list[str]) -> list[str]:
    """The same lines in a different order (any order differs once there are two lines)."""
    order = rng.permutation(len(lines))
    if len(lines) > 1 and np.array_equal(order, np.arange(len(lines))):
        order = np.roll(order, 1)
    return [lines[i] for i in order]


def _best_threshold(values: np.ndarray, positive: np.ndarray) -> float:
    """Intensity threshold (keep >= t) with the best balanced accuracy of motion vs noise."""
    if positive.all() or not positive.any():
        return 0.0
    order = np.argsort(values, kind="stable")
    v, p = values[order], positive[order]
    # cut before position i: noise below = cumsum of ~p up to i, motion kept = motion from i on
    noise_below = np.concatenate([[0], np.cumsum(~p)]) / (~p).sum()
    motion_kept = 1.0 - np.concatenate([[0], np.cumsum(p)]) / p.sum()
    cuts = np.concatenate([[v[0] - 1.0], (v[:-1] + v[1:]) / 2, [v[-1] + 1.0]])
    return round(float(cuts[int(np.argmax(noise_below + motion_kept))]), 5)


def _exact_mask(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """(n,) bool with exactly round(share * n) randomly placed True values."""
    mask = np.zeros(n, bool)
    mask[rng.choice(n, int(round(share * n)), replace=False)] = True
    return mask


def _plan(args: dict, rng: np.random.Generator) -> tuple[list[int], list[int], dict[int, list[_Plan]]]:
    """Draw subjects, per-subject counts, labels, file names and AUs.

    Returns all subject numbers, the labeled ones, and each subject's pairs (labeled first).
    """
    n_subjects, seed = args["n_subjects"], args["seed"]
    classes = CLASS_NAMES_4 if args["n_classes"] == 4 else CLASS_NAMES_3
    drawn = rng.choice(217, n_subjects + args["pool_only_subjects"], replace=False)
    numbers = sorted(int(n) + 1 for n in drawn)
    labeled_numbers = sorted(int(n) for n in rng.choice(numbers, n_subjects, replace=False))

    total = n_subjects * args["samples_per_subject"]
    weights = rng.lognormal(0.0, 0.9, n_subjects)
    per_subject = 1 + rng.multinomial(total - n_subjects, weights / weights.sum())
    shares = np.array([CASME3_TEST_COUNTS[c] for c in classes], float)
    labels = rng.permutation(np.repeat(np.arange(len(classes)), _largest_remainder(total, shares)))
    same = _exact_mask(rng, total, args["apex_equals_onset_share"])
    noisy = _exact_mask(rng, total, args["label_noise"])
    n_pool = args["pool_per_subject"] * len(numbers)
    noise_only = _exact_mask(rng, n_pool, args["low_intensity_share"])

    plans: dict[int, list[_Plan]] = {n: [] for n in numbers}
    used: dict[int, set[tuple[str, int, int]]] = {n: set() for n in numbers}
    for i, number in enumerate(np.repeat(labeled_numbers, per_subject)):
        name, cls = f"spNO.{number}", classes[labels[i]]
        key = _key(name, *_draw_frames(rng, used[number], bool(same[i])))
        au_rng = np.random.default_rng([seed, 3, i])
        pattern = cls if not noisy[i] else au_rng.choice([c for c in classes if c != cls])
        plans[number].append(_Plan(len(plans[number]), key, f"{RGB_DIR}/{cls}/{key}.png",
                                   f"{DEPTH_DIR}/{cls}/{key}_depth.png", int(labels[i]),
                                   _draw_class_aus(au_rng, str(pattern)), bool(same[i])))
    for j, number in enumerate(np.repeat(numbers, args["pool_per_subject"])):
        name = f"spNO.{number}"
        key = _key(name, *_draw_frames(rng, used[number], False))
        au_rng = np.random.default_rng([seed, 4, j])
        n_aus = 0 if noise_only[j] else int(au_rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        aus = tuple(sorted(au_rng.choice(AU_NAMES, n_aus, replace=False), key=AU_NAMES.index))
        plans[number].append(_Plan(POOL_INDEX_OFFSET + j, key, f"{POOL_DIR}/rgb/{name}/{key}.png",
                                   f"{POOL_DIR}/depth/{name}/{key}_depth.png", -1, aus, False))
    return numbers, labeled_numbers, plans


def generate_dataset(out_dir: str | Path, seed: int = 0, n_subjects: int = 10,
                     samples_per_subject: int = 30, pool_per_subject: int = 50,
                     pool_only_subjects: int = 2, image_size: int = 72, n_classes: int = 4,
                     low_intensity_share: float = 0.4, apex_equals_onset_share: float = 0.05,
                     label_noise: float = 0.1, depth_bits: int = 8) -> dict:
    """Write a synthetic CAS(ME)^3-like dataset under ``out_dir`` and return a summary.

    Labeled: ``n_subjects * samples_per_subject`` samples with heavy-tailed per-subject counts (at
    least one each) and CAS(ME)^3 class shares; ``apex_equals_onset_share`` of them have an all-zero
    difference and ``label_noise`` of them carry the AU pattern of another class (noisy
    self-reports). Pool: ``pool_per_subject`` pairs for every labeled subject and for
    ``pool_only_subjects`` unlabeled subjects, ``low_intensity_share`` of them noise-only. Images
    are ``image_size`` px squares; depth differences are 8- or 16-bit (``depth_bits``).

    Returns a JSON-able dict: arguments, subjects, labeled counts (total, per class, per subject,
    apex == onset, label noise), pool counts (pairs, with motion, noise only, the intensity
    threshold that best separates them and what it keeps), the largest AU displacement in pixels,
    and ``seconds``. Raises ``SyntheticError`` for bad arguments or a non-empty folder that is not a
    synthetic output.
    """
    start = time.perf_counter()
    args = dict(seed=seed, n_subjects=n_subjects, samples_per_subject=samples_per_subject,
                pool_per_subject=pool_per_subject, pool_only_subjects=pool_only_subjects,
                image_size=image_size, n_classes=n_classes, low_intensity_share=low_intensity_share,
                apex_equals_onset_share=apex_equals_onset_share, label_noise=label_noise,
                depth_bits=depth_bits)
    _validate(args)
    out = Path(out_dir)
    _prepare_out_dir(out, args)
    rng = np.random.default_rng([seed, 0])
    numbers, labeled_numbers, plans = _plan(args, rng)

    labeled_lines: dict[int, list[tuple[str, str]]] = {n: [] for n in labeled_numbers}
    pool_rows: list[_PoolRow] = []
    max_disp = 0.0
    for number in numbers:
        subj = _make_subject(seed, number, image_size)
        for plan in plans[number]:
            rendered = _render_pair(subj, plan, seed, depth_bits)
            _write_png(out / plan.rgb_path, rendered.rgb)
            _write_png(out / plan.depth_path, rendered.depth)
            max_disp = max(max_disp, rendered.max_displacement_px)
            if plan.label >= 0:
                labeled_lines[number].append((f"{plan.rgb_path} {plan.label} 0",
                                              f"{plan.depth_path} {plan.label} 0"))
            else:
                intensity = round(rendered.intensity, 4)  # as written in the lists
                pool_rows.append(_PoolRow(plan.key, plan.rgb_path, plan.depth_path, intensity, plan.aus))

    classes = CLASS_NAMES_4 if n_classes == 4 else CLASS_NAMES_3
    _write_lists(out, rng, classes, labeled_lines, pool_rows)
    summary = _summary(args, classes, labeled_numbers, numbers, plans, pool_rows, max_disp)
    _write_json(out / MARKER_NAME, {"generator": GENERATOR_ID, "complete": True, **summary})
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def _write_lists(out: Path, rng: np.random.Generator, classes: tuple[str, ...],
                 labeled_lines: dict[int, list[tuple[str, str]]], pool_rows: list[_PoolRow]) -> None:
    """classes.txt, subName.txt, per-subject LOSO lists and the pool lists + ground truth."""
    data = out / "data"
    _write_lines(data / "classes.txt", list(classes))
    _write_lines(data / "v_rgb" / "subName.txt", sorted(f"spNO{n}" for n in labeled_lines))
    rgb_of = {n: sorted(rgb for rgb, _ in pairs) for n, pairs in labeled_lines.items()}
    depth_of = {n: [d for _, d in pairs] for n, pairs in labeled_lines.items()}
    for number in labeled_lines:
        list_name = f"spNO{number}"
        others = [m for m in labeled_lines if m != number]
        for split, members in (("test", [number]), ("train", others)):
            rgb_lines = sorted(line for m in members for line in rgb_of[m])
            depth_lines = _other_order(rng, sorted(line for m in members for line in depth_of[m]))
            _write_lines(data / "v_rgb" / f"{list_name}_{split}.txt", rgb_lines)
            _write_lines(data / "v_depth" / f"{list_name}_{split}.txt", depth_lines)
    pool_rows = sorted(pool_rows)
    _write_lines(data / "v_rgb" / "pretrain.txt", [f"{r.rgb_path} -1 0 {r.intensity:.4f}" for r in pool_rows])
    _write_lines(data / "v_depth" / "pretrain.txt",
                 _other_order(rng, [f"{r.depth_path} -1 0 {r.intensity:.4f}" for r in pool_rows]))
    _write_lines(out / POOL_DIR / "ground_truth.csv",
                 ["key,subject,has_motion,aus"]
                 + [f"{r.key},{r.key.split('-')[0]},{int(bool(r.aus))},{'+'.join(r.aus)}" for r in pool_rows])


def _summary(args: dict, classes: tuple[str, ...], labeled_numbers: list[int], numbers: list[int],
             plans: dict[int, list[_Plan]], pool_rows: list[_PoolRow], max_displacement_px: float) -> dict:
    """Counts of what was written (deterministic: no paths, no timing)."""
    labeled = [p for n in labeled_numbers for p in plans[n] if p.label >= 0]
    per_class = Counter(classes[p.label] for p in labeled)
    intensity = np.array([row.intensity for row in pool_rows])
    motion = np.array([bool(row.aus) for row in pool_rows], bool)
    threshold = _best_threshold(intensity, motion)
    kept = intensity >= threshold
    return {
        "arguments": args,
        "classes": list(classes),
        "subjects": [f"spNO{n}" for n in labeled_numbers],
        "pool_only_subjects": [f"spNO{n}" for n in numbers if n not in labeled_numbers],
        "labeled": {
            "total": len(labeled),
            "per_class": {c: per_class[c] for c in classes},
            "per_subject": {f"spNO{n}": sum(p.label >= 0 for p in plans[n]) for n in labeled_numbers},
            "apex_equals_onset": sum(p.same_frame for p in labeled),
            "label_noise": int(round(args["label_noise"] * len(labeled))),
        },
        "pool": {
            "pairs": len(pool_rows),
            "with_motion": int(motion.sum()),
            "noise_only": int((~motion).sum()),
            "intensity_threshold": threshold,
            "kept": int(kept.sum()),
            "dropped": int((~kept).sum()),
            "noise_dropped": int((~kept & ~motion).sum()),
            "motion_kept": int((kept & motion).sum()),
        },
        "max_au_displacement_px": round(max_displacement_px, 3),
    }
