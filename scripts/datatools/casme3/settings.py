"""The settings of one CAS(ME)^3 preparation, and the inputs their files name.

`Settings` is built once from the parsed flags of `scripts/data/prepare_casme3.py`; every step reads its
setting there, and nothing reads the flags afterwards.
"""
from __future__ import annotations

import argparse
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from dataset import image_folder
from scripts.datatools.casme3.annotations import ClassMap, builtin_class_map, read_boxes, read_class_map
from scripts.datatools.casme3.frames import AuTables
from scripts.datatools.casme3.images import ImageSettings
from scripts.datatools.common.crop import Box
from util import UserError


@dataclass(frozen=True)
class Settings:
    """Every flag of `scripts/data/prepare_casme3.py` (same names), with `crop` and `pool` resolved.

    Paths stay as given, as the report records them.
    """
    root: str
    annotation: str
    sheet: str | None
    out: str
    overwrite: bool
    workers: int
    strict: bool
    classes: int
    class_map: str | None
    keep_zero_gap: bool
    image_size: int
    crop: str
    box_file: str | None
    crop_margin: float
    rgb_gain: float
    depth_gain: float
    motion_compensation: bool
    pool: str
    part_b_root: str | None
    pool_exclude: tuple[str, ...]
    gap: int
    stride: int
    intensity: str
    au_dir: str | None
    calibrate: bool
    calibration_percentile: float
    intensity_threshold: float | None

    @classmethod
    def from_flags(cls, flags: argparse.Namespace) -> Settings:
        """The settings of parsed flags: `--crop` defaults to box with a box file, else face;
        `--pool auto` is ab with a Part B root, else a."""
        values = dict(vars(flags), pool_exclude=tuple(flags.pool_exclude))
        if values["crop"] is None:
            values["crop"] = "box" if values["box_file"] else "face"
        if values["pool"] == "auto":
            values["pool"] = "ab" if values["part_b_root"] else "a"
        return cls(**values)

    @property
    def out_dir(self) -> Path:
        """`--out` as a path."""
        return Path(self.out)

    @property
    def image_settings(self) -> ImageSettings:
        """What changes the written images (the crop margin only counts for a face crop)."""
        return ImageSettings(self.crop, self.crop_margin if self.crop == "face" else 0.0, self.image_size,
                             self.rgb_gain, self.depth_gain, self.motion_compensation)

    def identity(self) -> dict:
        """What determines the output, as the output folder's run record holds it: every flag but
        --out, --overwrite, --workers and --strict, input paths resolved, the image settings as
        the images use them, and the SHA-1 of the box file (`box_file_sha1`)."""
        values = {k: v for k, v in asdict(self).items() if k not in ("out", "overwrite", "workers", "strict")}
        for name in ("root", "annotation", "box_file", "class_map", "part_b_root", "au_dir"):
            if values[name] is not None:
                values[name] = str(Path(values[name]).resolve())
        values["pool_exclude"] = [str(Path(path).resolve()) for path in self.pool_exclude]
        values["box_file_sha1"] = hashlib.sha1(Path(self.box_file).read_bytes()).hexdigest() if self.box_file else None
        return {**values, **asdict(self.image_settings)}


# The settings an output folder keeps for good: those of its images (and of the cached measures).
# The others (which MEs and pool pairs, their classes, the threshold) may change from run to run: a
# re-run reuses every image made with the same image settings and rewrites the lists and reports.
# How the pool's pairs are sampled from each video unless --gap / --stride say otherwise: frames
# f and f + POOL_GAP, every POOL_STRIDE frames (the synthetic raw release places its pairs so).
POOL_GAP, POOL_STRIDE = 6, 30
IMAGE_SETTINGS = ("crop", "crop_margin", "image_size", "rgb_gain", "depth_gain", "motion_compensation",
                  "box_file_sha1")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check(settings: Settings) -> None:
    """Validate paths and the flags' combinations (each flag's range is its parser type's);
    UserError naming the first problem."""
    for name in ("root", "part_b_root", "au_dir"):
        value = getattr(settings, name)
        if value is not None and not Path(value).is_dir():
            raise UserError(f"{value}: --{name} folder not found")
    files = [(name, getattr(settings, name)) for name in ("annotation", "box_file", "class_map")]
    for name, value in files + [("pool_exclude", v) for v in settings.pool_exclude]:
        if value is not None and not Path(value).is_file():
            raise UserError(f"{value}: --{name} file not found")
    out = Path(settings.out).resolve()
    for name in ("root", "part_b_root", "au_dir"):
        value = getattr(settings, name)
        if value is not None and _inside(out, Path(value).resolve()):
            raise UserError(f"--out {settings.out} is inside the input tree --{name} {value}; "
                            f"choose an output folder outside it")
    if 0 < settings.image_size < 16:
        raise UserError(f"--image_size {settings.image_size}: use 0 (keep the crop size) or at least 16")
    if settings.calibration_percentile > 100:
        raise UserError(f"--calibration_percentile {settings.calibration_percentile:g}: must be in 0..100")
    if settings.crop == "box" and settings.box_file is None:
        raise UserError("--crop box needs --box_file")
    if settings.box_file is not None and settings.crop != "box":
        raise UserError(f"--box_file is only used with --crop box (got --crop {settings.crop})")
    if settings.intensity == "au" and settings.au_dir is None:
        raise UserError("--intensity au needs --au_dir (OpenFace CSVs)")
    if settings.calibrate and settings.intensity_threshold is not None:
        raise UserError("use either --calibrate or --intensity_threshold, not both")
    if "b" in settings.pool and settings.part_b_root is None:
        raise UserError(f"--pool {settings.pool} needs --part_b_root")


@dataclass(frozen=True)
class Inputs:
    """What the settings' files hold, read once: class mapping, crop boxes per video, AU tables."""
    class_map: ClassMap
    boxes: dict[tuple[int, str], Box] | None
    au: AuTables | None

    @property
    def image_folder(self) -> str:
        """Top folder of the labeled images for this number of classes."""
        return image_folder(len(self.class_map.classes))


def read_inputs(settings: Settings) -> Inputs:
    """The class mapping (`--class_map`, else the built-in one of `--classes`), the box file and
    the OpenFace folder's tables."""
    class_map = read_class_map(settings.class_map) if settings.class_map else builtin_class_map(settings.classes)
    return Inputs(class_map, read_boxes(settings.box_file) if settings.box_file else None,
                  AuTables(Path(settings.au_dir)) if settings.au_dir else None)
