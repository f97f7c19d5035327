"""Prepare a CAS(ME)^3 release for DVSCL (docs/casme3-preparation.md; --help for flags).

The flags are parsed here into one `Settings` object; `scripts.datatools.casme3.prepare` does the work.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dataset import DEPTH_GAIN, RGB_GAIN  # noqa: E402
from scripts.datatools.casme3.images import MEASURES  # noqa: E402
from scripts.datatools.casme3.prepare import prepare  # noqa: E402
from scripts.datatools.casme3.settings import POOL_GAP, POOL_STRIDE, Settings  # noqa: E402
from util import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, ArgumentParser, run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command line of `scripts/data/prepare_casme3.py`."""
    parser = ArgumentParser(
        description="Prepare CAS(ME)^3 for DVSCL: RGB, depth and grey (luma, for --view RGB_gray) difference "
                    "images of the labeled MEs, LOSO lists and an unlabeled pre-training pool with per-pair "
                    "intensities.")
    inputs = parser.add_argument_group("inputs and output")
    inputs.add_argument("--root", required=True, help="Part A root holding RGB/ and depth/")
    inputs.add_argument("--annotation", required=True,
                        help="ME annotation: the V2 .xlsx (sheet 'label'), the V1 .xls or a .csv with "
                             "columns Subject, Filename, Onset, Apex, Offset, emotion")
    inputs.add_argument("--sheet", default=None, help="workbook sheet (default 'label', or the only sheet)")
    inputs.add_argument("--out", required=True, help="output data folder (outside every input tree)")
    inputs.add_argument("--overwrite", action="store_true",
                        help="remove what an earlier preparation wrote in --out and recompute every pair (needed "
                             "to change image settings in an existing --out)")
    inputs.add_argument("--workers", type=NON_NEGATIVE_INT, default=0, help="worker processes (0: in this process)")
    inputs.add_argument("--strict", action="store_true",
                        help="stop at the first skipped ME instead of reporting it")

    labels = parser.add_argument_group("labels")
    labels.add_argument("--classes", type=int, choices=(3, 4), default=4,
                        help="4: negative, others, positive, surprise; 3: without others")
    labels.add_argument("--class_map", default=None,
                        help="file of '<emotion> <class>' lines ('-' drops an emotion); overrides --classes")
    labels.add_argument("--keep_zero_gap", action="store_true",
                        help="keep MEs with Apex == Onset (all-zero difference; the published lists kept them)")

    images = parser.add_argument_group("images")
    images.add_argument("--image_size", type=NON_NEGATIVE_INT, default=256, help="output side in pixels (0: crop size)")
    images.add_argument("--crop", choices=("face", "box", "none"), default=None,
                        help="face: OpenCV Haar cascade on the first frame; box: --box_file; none: whole "
                             "frame (default: box with --box_file, else face)")
    images.add_argument("--box_file", default=None, help="CSV Subject, Filename, x, y, w, h: one box per video")
    images.add_argument("--crop_margin", type=NON_NEGATIVE, default=0.2,
                        help="margin added on each side of a detected face, as a fraction of its side")
    images.add_argument("--rgb_gain", type=POSITIVE, default=RGB_GAIN,
                        help="grey levels per 8-bit intensity step: pixel = 128 + gain * (apex - onset); "
                             "the default saturates at +-64 levels (as the synthetic data); also the grey "
                             "view's gain")
    images.add_argument("--depth_gain", type=POSITIVE, default=DEPTH_GAIN[8],
                        help="grey levels per raw depth unit (mm): pixel = 128 + gain * (apex - onset); "
                             "the default saturates at +-8 mm (as the synthetic data)")
    images.add_argument("--motion_compensation", action="store_true",
                        help="register the apex frame to the onset frame (global rigid motion, OpenCV ECC on the "
                             "cropped grey frames) before measuring intensity and differencing, so that head "
                             "motion leaves no edges in the difference images (docs/casme3-preparation.md)")

    pool = parser.add_argument_group("unlabeled pre-training pool")
    pool.add_argument("--pool", choices=("auto", "none", "a", "b", "ab"), default="auto",
                      help="sources: Part A outside annotated intervals (a), Part B (b); auto: ab with "
                           "--part_b_root, else a")
    pool.add_argument("--part_b_root", default=None, help="Part B root (same layout as Part A)")
    pool.add_argument("--pool_exclude", action="append", default=[],
                      help="more annotations (e.g. macro-expressions; columns Subject, Filename, Onset"
                           "[, Apex, Offset]) whose intervals stay out of the pool (repeatable)")
    pool.add_argument("--gap", type=POSITIVE_INT, default=POOL_GAP, help="frames between the two frames of a pair")
    pool.add_argument("--stride", type=POSITIVE_INT, default=POOL_STRIDE, help="frames between consecutive pairs")
    pool.add_argument("--intensity", choices=MEASURES, default="mad",
                      help="pair intensity written to pretrain.txt: mad (mean absolute RGB difference in "
                           "the crop, 8-bit levels), flow (mean Farneback flow magnitude in output pixels), "
                           "au (max over AUs of the absolute AU change)")
    pool.add_argument("--au_dir", default=None,
                      help="OpenFace CSVs as AU_DIR/<Subject>/<Filename>.csv (frame, AUxx_r columns)")
    pool.add_argument("--calibrate", action="store_true",
                      help="threshold = a low percentile of the labeled MEs' intensities; also plots "
                           "intensity_histogram.png")
    pool.add_argument("--calibration_percentile", type=NON_NEGATIVE, default=5.0,
                      help="percentile (0..100) of the labeled intensities used by --calibrate")
    pool.add_argument("--intensity_threshold", type=NON_NEGATIVE, default=None,
                      help="keep pool pairs with intensity >= this")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point; returns the report."""
    return prepare(Settings.from_flags(build_parser().parse_args(argv)))


if __name__ == "__main__":
    run_cli(main)
