"""The write side of the data format that `dataset.py` defines and reads: the encoding of
difference images, PNG files (written atomically, and verified in full before a re-run reuses
one), list lines, list files and per-subject LOSO lists. The format's constants (folder and list
names, gains, luma weights) stay in `dataset.py`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from dataset import CLASS_LIST, DBTYPE_CASME3, LUMA_WEIGHTS, RGB_GAIN, RGB_LISTS, SUBJECT_LIST, split_list
from util import UserError, atomic_write_text

SPLITS = ("train", "test")


def encode_difference(diff: np.ndarray, gain: float, bits: int = 8) -> np.ndarray:
    """Signed difference (any shape) -> uint8 (`bits` 8) or uint16 (`bits` 16) of the same shape:
    `clip(round(mid + gain * diff), 0, 2**bits - 1)`, mid = 2**(bits - 1), round half to even.

    Mid-grey is no change; a change beyond +-mid/gain saturates instead of wrapping around as an
    unsigned subtraction does.
    """
    mid, top = 1 << (bits - 1), (1 << bits) - 1
    dtype = np.uint8 if bits == 8 else np.uint16
    return np.clip(np.rint(mid + gain * np.asarray(diff, np.float64)), 0, top).astype(dtype)


def luma(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) R, G, B values -> (...) float64 ITU-R 601 luma (`dataset.LUMA_WEIGHTS`).

    Written out term by term, not as a matrix product, so that the sum is rounded the same way on
    every machine (a BLAS product may reorder or fuse it) and a half-level tie of the encoding
    falls on the same side wherever the images are made.
    """
    rgb = np.asarray(rgb, np.float64)
    w_r, w_g, w_b = LUMA_WEIGHTS
    return w_r * rgb[..., 0] + w_g * rgb[..., 1] + w_b * rgb[..., 2]


def encode_gray_difference(rgb_diff: np.ndarray, gain: float = RGB_GAIN) -> np.ndarray:
    """The grey view of a pair: its RGB difference `apex - onset` (H, W, 3), channels R, G, B, ->
    (H, W) uint8 `encode_difference(luma(rgb_diff), gain)`, with the RGB view's gain.

    Luma is linear, so this is luma(apex) - luma(onset), the difference of the two grey frames.
    It is taken from the unrounded difference rather than from 8-bit grey frames, so that no
    rounding of the grey frames enters it, and so that it is what one recomputes from an RGB
    difference image wherever no channel saturated.
    """
    return encode_difference(luma(rgb_diff), gain)


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write a (H, W, 3) uint8 RGB, (H, W) uint8 grey or (H, W) uint16 grey image as a PNG with
    Pillow (modes RGB, L, I;16), atomically: a temporary file in the same folder, then a rename.
    A failed write is a `UserError` naming `path`."""
    image = Image.fromarray(np.ascontiguousarray(array))
    if image.mode not in ("RGB", "L", "I;16"):
        raise ValueError(f"{path}: cannot write a {array.dtype} array of shape {array.shape} as a PNG")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # level 1: difference images are noise-like, so stronger compression costs time for little
        image.save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: could not be written ({err.strerror or err})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def png_ok(path: str | Path, mode: str, size: int = 0) -> bool:
    """Whether `path` is a whole PNG of `mode` (and `size` x `size` when size > 0): every chunk's
    CRC checked, then the image decoded in full (a PNG cut short by an interrupted run or a full
    disk still has a valid header)."""
    try:
        with Image.open(path) as image:
            if image.format != "PNG" or image.mode != mode or (size and image.size != (size, size)):
                return False
            image.verify()
        with Image.open(path) as image:
            image.load()
        return True
    except (OSError, ValueError, SyntaxError):
        return False


def list_line(path: str, label: int, intensity: float | None = None, intensity_format: str = ".6g",
              dbtype: int = DBTYPE_CASME3) -> str:
    """One list line (`dataset.LIST_LINE`): `<path> <label> <dbtype>`, then the intensity when given."""
    line = f"{path} {label} {dbtype}"
    return line if intensity is None else f"{line} {intensity:{intensity_format}}"


def write_list(path: str | Path, lines: Iterable[str]) -> None:
    """A list file (or any file of lines): every line ends with a newline; written atomically."""
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))


def write_loso_lists(list_folder: Path, views: Mapping[str, Mapping[str, Sequence[str]]],
                     classes: Sequence[str]) -> list[str]:
    """Per-subject LOSO lists of every view, subName.txt and classes.txt under `list_folder`.

    `views` maps a view's list folder (`dataset.RGB_LISTS`, ...) to each subject's lines, every
    view with the same subjects in the order of subName.txt. `<subject>_test.txt` holds the
    subject's lines, `<subject>_train.txt` every other subject's, in subject order. Split lists
    that an earlier run wrote for subjects without lines now are removed. Returns the subjects.
    """
    subjects = list(next(iter(views.values())))
    wanted = {split_list(subject, split) for subject in subjects for split in SPLITS}
    for view, lines in views.items():
        folder = list_folder / view
        for subject in subjects:
            write_list(folder / split_list(subject, "test"), lines[subject])
            write_list(folder / split_list(subject, "train"),
                       [line for other in subjects if other != subject for line in lines[other]])
        for stale in folder.iterdir():
            if stale.name.endswith(tuple(f"_{split}.txt" for split in SPLITS)) and stale.name not in wanted:
                stale.unlink()
    write_list(list_folder / RGB_LISTS / SUBJECT_LIST, subjects)
    write_list(list_folder / CLASS_LIST, classes)
    return subjects
