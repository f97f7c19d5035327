"""Synthetic faces: a subject's geometry, albedo and height maps, and its AU displacement basis.

Every subject gets its own face: face shape, eye / brow / nose / mouth geometry, skin tone and
texture, hair, lighting direction, camera distance and a small pose offset (roll, yaw, position).
The face is drawn as a per-subject albedo map and a registered height map (head ellipsoid, nose,
brow ridge, eye sockets, cheeks, lips, chin); `scripts.datatools.synthetic.render` shades and
samples them into frames.

An AU is a set of Gaussian patches, each a smooth displacement of the skin (brows, lids and lips
move) and a local height change (bulges, furrows, dimples) that also changes the shading.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

AU_NAMES = ("AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12", "AU14", "AU15", "AU17",
            "AU26", "AU45")
FACE_HALF_WIDTH_MM = 75.0


@dataclass(frozen=True)
class Geometry:
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
class Subject:
    """A rendered subject: canonical maps, AU basis, camera and light."""

    number: int
    geometry: Geometry
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


def _draw_geometry(rng: np.random.Generator, size: int) -> Geometry:
    a = size * rng.uniform(0.38, 0.43)
    ey = rng.uniform(-0.22, -0.12)
    ew = rng.uniform(0.14, 0.19)
    return Geometry(
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


def _face_coords(g: Geometry, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Face-normalised coordinates (u, v) of every pixel, each (S, S)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = x - g.cx, y - g.cy
    c, s = math.cos(g.roll), math.sin(g.roll)
    return (c * dx + s * dy) / g.a, (-s * dx + c * dy) / g.b


def _render_canonical(g: Geometry, size: int, rng: np.random.Generator
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


def _au_components(g: Geometry) -> dict[str, tuple[_Component, ...]]:
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


def _au_basis(g: Geometry, size: int) -> np.ndarray:
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


def make_subject(seed: int, number: int, size: int) -> Subject:
    """Subject `number` from its own random stream ``[seed, 1, number]``, drawn at `size` (S) px."""
    rng = np.random.default_rng([seed, 1, number])
    g = _draw_geometry(rng, size)
    maps, face_mask = _render_canonical(g, size, rng)
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.5, 0.1), 1.0])
    light /= np.linalg.norm(light)
    ambient = rng.uniform(0.3, 0.45)
    return Subject(
        number=number, geometry=g, maps=maps, face_mask=face_mask, basis=_au_basis(g, size),
        grid=np.mgrid[0:size, 0:size][::-1].astype(np.float32),
        light=light, ambient=ambient, diffuse=(1.0 - ambient) / light[2],
        background_shade=rng.uniform(0.75, 0.95), exposure=rng.uniform(0.8, 1.0),
        distance_mm=rng.uniform(620.0, 760.0), pitch_mm=FACE_HALF_WIDTH_MM / g.a,
    )
