"""Prepare the MEGC2019 composite database (SMIC-HS, CASME II, SAMM) for DVSCL (docs/megc2019.md;
--help for flags).

The flags are parsed here into one `Settings` object; `scripts.datatools.megc2019.prepare` does the work.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dataset import RGB_GAIN  # noqa: E402
from scripts.datatools.megc2019.prepare import Settings, prepare  # noqa: E402
from util import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, ArgumentParser, run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command line of `scripts/data/prepare_megc2019.py`."""
    parser = ArgumentParser(
        description="Prepare the MEGC2019 composite database for DVSCL: RGB onset-apex difference images of "
                    "SMIC-HS, CASME II and SAMM, 3 classes (negative, positive, surprise), and LOSO lists over "
                    "subjects named per database (smic_s1, casme2_sub01, samm_006).")
    inputs = parser.add_argument_group("inputs and output (at least one database)")
    inputs.add_argument("--smic", default=None, help="SMIC root holding HS/ (HS/s<n>/micro/<class>/<clip>/*.bmp)")
    inputs.add_argument("--casme2", default=None,
                        help="CASME II root holding CASME2_RAW_selected/sub<nn>/<Filename>/img<n>.jpg")
    inputs.add_argument("--casme2_sheet", default=None,
                        help="CASME II coding sheet (default CASME2/CASME2-coding-20140508.xlsx)")
    inputs.add_argument("--samm", default=None, help="SAMM root holding <nnn>/<Filename>/<nnn>_<n>.jpg (or SAMM/ "
                                                     "holding them)")
    inputs.add_argument("--samm_sheet", default=None,
                        help="SAMM sheet (default SAMM_Micro_FACS_Codes_v2.xlsx in --samm or beside it)")
    inputs.add_argument("--out", required=True, help="output data folder (outside every input tree)")
    inputs.add_argument("--overwrite", action="store_true",
                        help="remove what an earlier preparation wrote in --out first (needed to prepare other "
                             "settings in an existing --out)")
    inputs.add_argument("--workers", type=NON_NEGATIVE_INT, default=0, help="worker processes (0: in this process)")
    rows = parser.add_argument_group("sheet rows")
    rows.add_argument("--estimate_bad_apex", dest="estimate_bad_apex", action="store_true", default=True,
                      help="keep a CASME II or SAMM row whose apex the sheet lacks or gets wrong (e.g. '/', -1, "
                           "outside the clip), its apex estimated as for SMIC and marked 'estimated' in "
                           "megc2019_samples.csv, as the standard 442-sample composite does (default: on)")
    rows.add_argument("--no_estimate_bad_apex", dest="estimate_bad_apex", action="store_false",
                      help="leave those rows out instead, each with a warning (default: kept, --estimate_bad_apex)")
    images = parser.add_argument_group("images")
    images.add_argument("--image_size", type=NON_NEGATIVE_INT, default=256, help="output side in pixels (0: crop size)")
    images.add_argument("--crop", choices=("face", "none"), default="face",
                        help="face: OpenCV Haar cascade on the onset frame; none: whole frame")
    images.add_argument("--crop_margin", type=NON_NEGATIVE, default=0.2,
                        help="margin added on each side of a detected face, as a fraction of its side")
    images.add_argument("--rgb_gain", type=POSITIVE, default=RGB_GAIN,
                        help="grey levels per 8-bit intensity step: pixel = 128 + gain * (apex - onset), as "
                             "the CAS(ME)^3 preparation")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point; returns the summary."""
    return prepare(Settings.from_flags(build_parser().parse_args(argv)))


if __name__ == "__main__":
    run_cli(main)
