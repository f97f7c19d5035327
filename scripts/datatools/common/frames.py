"""Source frames: a clip's frame files by number, and frames decoded and verified, not trusted.

OpenCV decodes a damaged JPEG anyway: libjpeg prints a warning on stderr ("Corrupt JPEG data: ...",
"Premature end of JPEG file") and the damaged part comes out grey or garbled, which would make a
plausible but false difference image. `read_rgb` and `read_depth` decode with OpenCV (the pixels
the preparations have always had), catch what the decoders print on the process's stderr while
they run, and raise `FrameError` for a frame that is empty, cannot be read or decoded, is a JPEG
without its end marker, or decodes with a warning that its data is corrupt. Other decoder messages
are passed on to stderr. The capture is per process (the preparations decode in one thread).
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Sequence

import cv2
import numpy as np

_TRAILING_NUMBER = re.compile(r"(\d+)$")
JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
TAIL_BYTES = 4096  # the end marker is looked for in this many last bytes (after any zero padding)
CORRUPT_DATA = ("Corrupt JPEG data", "Premature end of JPEG file")  # libjpeg's warnings of damaged data


class FrameError(Exception):
    """A frame that cannot be used; the pair or clip is left out and reported as `kind`
    ('unreadable_frame', 'truncated_frame' or 'corrupt_frame')."""

    def __init__(self, message: str, kind: str = "unreadable_frame") -> None:
        super().__init__(message)
        self.kind = kind


def frame_index(folder: Path, suffixes: Sequence[str]) -> dict[int, Path]:
    """Frame number -> file of the frames in `folder` whose name ends in one of `suffixes` (any
    case): the number is the trailing digits of the name without its suffix; of two files with one
    number, the first by name. Empty when `folder` is not a folder."""
    frames: dict[int, Path] = {}
    if not folder.is_dir():
        return frames
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        suffix = next((s for s in suffixes if entry.name.lower().endswith(s)), None)
        if suffix is not None and entry.is_file():
            match = _TRAILING_NUMBER.search(entry.name[: -len(suffix)])
            if match:
                frames.setdefault(int(match.group(1)), Path(entry.path))
    return frames


def jpeg_problem(head: bytes, tail: bytes, path: str) -> str | None:
    """Why a file starting with `head` and ending with `tail` cannot be a whole JPEG frame, or None
    (also None for a file that is not a JPEG: the decoder judges those). A JPEG ends with the
    end-of-image marker FFD9, zero padding after it tolerated."""
    if head.startswith(JPEG_START) and not tail.rstrip(b"\0").endswith(JPEG_END):
        return f"RGB frame {path} is truncated (no JPEG end marker FFD9)"
    return None


def read_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR frame (a grey frame gives three equal channels); FrameError when it is
    not a whole, undamaged image."""
    data = _read_bytes(path, "RGB")
    problem = jpeg_problem(data[:2], data[-TAIL_BYTES:], path)
    if problem:
        raise FrameError(problem, "truncated_frame")
    return _decode(data, cv2.IMREAD_COLOR, "RGB", path)


def read_depth(path: str) -> np.ndarray:
    """(H, W) uint16 (or uint8) raw depth frame; FrameError as for `read_rgb`, or when it is not a
    single-channel image."""
    image = _decode(_read_bytes(path, "depth"), cv2.IMREAD_UNCHANGED, "depth", path)
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise FrameError(f"depth frame {path} is {image.dtype} with shape {image.shape}, "
                         f"expected a single-channel 16-bit PNG")
    return image


def _read_bytes(path: str, view: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise FrameError(f"cannot read {view} frame {path} ({err.strerror or err})") from None
    if not data:
        raise FrameError(f"{view} frame {path} is empty (0 bytes)")
    return data


def _decode(data: bytes, flags: int, view: str, path: str) -> np.ndarray:
    """OpenCV's decoding of `data`, its decoder messages caught: FrameError when it fails or
    libjpeg says the data is corrupt."""
    with _stderr_caught() as messages:
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        except cv2.error:
            image = None
    corrupt = [m for m in messages if m.startswith(CORRUPT_DATA)]
    for message in messages:
        if message not in corrupt:
            print(message, file=sys.stderr)
    if corrupt:
        raise FrameError(f"{view} frame {path} is corrupt (libjpeg: {corrupt[0]})", "corrupt_frame")
    if image is None:
        raise FrameError(f"cannot decode {view} frame {path}")
    return image


_sink: IO[bytes] | None = None  # where the process's stderr goes while a frame is decoded


@contextmanager
def _stderr_caught() -> Iterator[list[str]]:
    """The lines written to file descriptor 2 inside the block (by C libraries too), in the list
    it yields once the block ends; nothing is caught where descriptor 2 cannot be redirected."""
    global _sink
    messages: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield messages
        return
    if _sink is None:
        _sink = tempfile.TemporaryFile()
    _sink.seek(0)
    _sink.truncate()
    os.dup2(_sink.fileno(), 2)
    try:
        yield messages
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        _sink.seek(0)
        messages += _sink.read().decode("utf-8", "replace").splitlines()
