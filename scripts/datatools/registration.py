"""Motion compensation: bring the onset and apex frames of a pair into register before differencing.

A difference image of two frames between which the head moved holds energy along every edge of
the face, in every class; a facial action is a local movement on top of it. A global rigid motion
(rotation + translation) found by OpenCV's ECC on the grey frames captures the head motion and
not the action, as long as the action covers a small part of the face.

The pair is registered symmetrically: the onset moves half-way towards the apex and the apex
half-way back, so both frames are resampled once, by the same kind of sub-pixel shift. Resampling
only the apex blurs it and not the onset, and at micro-expression amplitudes that blur leaves as
much difference energy along sharp edges as a pixel of head motion.

Public API: ``estimate_motion``, ``compensate``, ``Motion``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np

ECC_ITERATIONS = 100
ECC_EPSILON = 1e-5
ECC_SMOOTHING = 5  # Gaussian kernel ECC applies to both images first: tolerance of sensor noise


class Motion(NamedTuple):
    """A rigid motion as a (2, 3) float32 matrix mapping onset pixel positions (x, y, 1) to apex
    positions; `converged` is False when ECC failed and the identity stands in."""

    matrix: np.ndarray
    converged: bool

    @property
    def shift_px(self) -> float:
        """Length of the translation, pixels."""
        return float(math.hypot(self.matrix[0, 2], self.matrix[1, 2]))

    @property
    def angle_deg(self) -> float:
        """Rotation angle, degrees."""
        return math.degrees(math.atan2(float(self.matrix[1, 0]), float(self.matrix[0, 0])))

    def half(self) -> Motion:
        """The rigid motion that, applied twice, gives this one."""
        angle = math.atan2(float(self.matrix[1, 0]), float(self.matrix[0, 0])) / 2
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        # x -> R x + t twice is x -> R^2 x + (R + I) t
        translation = np.linalg.solve(rotation + np.eye(2), self.matrix[:, 2].astype(np.float64))
        return Motion(np.hstack([rotation, translation[:, None]]).astype(np.float32), self.converged)

    def inverse(self) -> Motion:
        """The rigid motion that undoes this one."""
        return Motion(cv2.invertAffineTransform(self.matrix), self.converged)


def estimate_motion(onset_gray: np.ndarray, apex_gray: np.ndarray) -> Motion:
    """The rigid motion that best maps `onset_gray` onto `apex_gray`, both (H, W), any real dtype.

    Identity (``converged`` False) when ECC does not converge, e.g. on a blank frame.
    """
    identity = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, ECC_EPSILON)
    try:
        _, warp = cv2.findTransformECC(onset_gray.astype(np.float32), apex_gray.astype(np.float32),
                                       identity.copy(), cv2.MOTION_EUCLIDEAN, criteria, None, ECC_SMOOTHING)
    except cv2.error:
        return Motion(identity, False)
    return Motion(warp, True)


def _resample(image: np.ndarray, motion: Motion, holes: bool) -> np.ndarray:
    """`image` (H, W) or (H, W, C) sampled at `motion`'s image of every pixel position, same dtype.

    The border is replicated, so no false edge enters a difference. With `holes`, 0 marks a
    missing value (depth): a pixel whose interpolation touches one becomes 0 too.
    """
    height, width = image.shape[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP

    def warp(values: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(values, motion.matrix, (width, height), flags=flags, borderMode=cv2.BORDER_REPLICATE)

    warped = warp(image.astype(np.float32))
    if holes:
        valid = warp((image != 0).astype(np.float32))
        warped[valid < 1.0 - 1e-4] = 0.0
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        warped = np.clip(np.rint(warped), info.min, info.max)
    return warped.astype(image.dtype)


def compensate(onset: np.ndarray, apex: np.ndarray, motion: Motion, holes: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """`onset` and `apex` frames ((H, W) or (H, W, C)) resampled onto the grid half-way between
    them, so that `motion` (onset -> apex) no longer separates them. `holes`: 0 marks a missing
    value (depth frames), kept out of interpolation."""
    half = motion.half()
    return _resample(onset, half.inverse(), holes), _resample(apex, half, holes)
