"""Write a synthetic CAS(ME)^3-like dataset in the real DVSCL layout (scripts/datatools/synthetic/).

    python scripts/data/make_synthetic_casme3.py --out DIR --seed 0

Then ``--data_folder DIR`` is all an entry script needs: the lists are under DIR/data. With
``--raw_release`` the same data is written as a raw release for scripts/data/prepare_casme3.py instead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.datatools.fake_release import ANNOTATION_NAME  # noqa: E402  (after the sys.path line)
from scripts.datatools.synthetic import generate as synthetic  # noqa: E402
from scripts.datatools.synthetic.raw_release import GROUND_TRUTH_NAME, PART_A, PART_B, RAW_ENTRIES  # noqa: E402
from scripts.datatools.synthetic.regime import (REGIMES, knob_help, knob_names,  # noqa: E402
                                                knob_type, make_regime)
from util import (NON_NEGATIVE_INT, POSITIVE_INT, PROBABILITY, SEED, ArgumentParser,  # noqa: E402
                  run_cli)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; defaults make a small CPU demo dataset."""
    parser = ArgumentParser(
        description="Generate synthetic CAS(ME)^3-like RGB, depth and grey (luma) difference images, per-subject "
                    "LOSO lists and an unlabeled pre-training pool, in the real DVSCL layout.",
        epilog=f"DIR must be new, empty, or an earlier output of this script (its run.json says so); there "
               f"only the generator's own entries ({', '.join(synthetic.PREPARED_ENTRIES)}; with --raw_release "
               f"{', '.join(RAW_ENTRIES)}) are deleted and rewritten, anything else there is left alone. "
               f"CAS(ME)^3 scale: --subjects 95 --samples_per_subject 10 --pool_per_subject 100 --image_size 224.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output folder DIR")
    parser.add_argument("--overwrite", action="store_true",
                        help="generate into a DIR that holds an output of other arguments (its entries are replaced)")
    parser.add_argument("--seed", type=SEED, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--subjects", type=POSITIVE_INT, default=10, help="labeled subjects (LOSO folds)")
    parser.add_argument("--samples_per_subject", type=POSITIVE_INT, default=30,
                        help="mean labeled samples per subject (counts per subject vary, at least 1)")
    parser.add_argument("--pool_per_subject", type=NON_NEGATIVE_INT, default=50,
                        help="unlabeled pre-training pairs per subject")
    parser.add_argument("--pool_only_subjects", type=NON_NEGATIVE_INT, default=2,
                        help="extra subjects with pool pairs only (like CAS(ME)^3 part B)")
    parser.add_argument("--image_size", type=POSITIVE_INT, default=72, help="square image side in pixels")
    parser.add_argument("--classes", type=int, choices=(3, 4), default=4,
                        help="4: negative, others, positive, surprise; 3: others dropped")
    parser.add_argument("--apex_equals_onset_share", type=PROBABILITY, default=0.05,
                        help="share of labeled samples with apex == onset (all-zero difference)")
    parser.add_argument("--label_noise", type=PROBABILITY, default=0.1,
                        help="share of labeled samples whose movement belongs to another class")
    parser.add_argument("--depth_bits", type=int, choices=(8, 16), default=8,
                        help="depth difference PNG bit depth (8: 128 + 16/mm, 16: 32768 + 64/mm)")
    parser.add_argument("--motion_compensation", action="store_true",
                        help="register the apex frame to the onset frame (global rigid motion, OpenCV ECC) "
                             "before differencing and measuring intensity, as prepare_casme3.py does")
    parser.add_argument("--raw_release", action="store_true",
                        help="write the same subjects, samples and pool pairs as a raw CAS(ME)^3 release (Part A "
                             "and Part B frames, the annotation workbook, ground_truth.csv) for "
                             "scripts/data/prepare_casme3.py, instead of difference images and lists")
    nuisance = parser.add_argument_group(
        "regime (nuisances)", "--regime picks a preset; each flag below overrides one of its values "
                              "(default: the preset's, shown per regime)")
    nuisance.add_argument("--regime", choices=tuple(REGIMES), default="default",
                          help="default: the face almost still between onset and apex; realistic: head motion, "
                               "blinks in every class, pose jitter, low amplitude, a third of the pool without "
                               "action (docs/synthetic-data.md)")
    for name in knob_names():
        presets = ", ".join(f"{regime} {getattr(values, name):.3g}" for regime, values in REGIMES.items())
        nuisance.add_argument(f"--{name}", type=knob_type(name), default=None, help=f"{knob_help(name)} ({presets})")
    return parser.parse_args(argv)


def format_summary(summary: dict, out: Path) -> str:
    """Human-readable lines for a generate_dataset summary."""
    args, labeled, pool = summary["arguments"], summary["labeled"], summary["pool"]
    per_class = ", ".join(f"{name} {count}" for name, count in labeled["per_class"].items())
    per_subject = ", ".join(f"{name} {count}" for name, count in labeled["per_subject"].items())
    layout = "raw release" if args["raw_release"] else f"{args['depth_bits']}-bit depth"
    return "\n".join([
        f"wrote {out} in {summary['seconds']:.1f} s (seed {args['seed']}, {args['image_size']} px, "
        f"{args['n_classes']} classes, {layout}"
        f"{', motion-compensated' if args['motion_compensation'] else ''})",
        "regime: " + ", ".join(f"{name} {value:.3g}" for name, value in args["regime"].items()),
        f"labeled: {labeled['total']} samples, {len(summary['subjects'])} subjects; {per_class}; "
        f"apex == onset {labeled['apex_equals_onset']}, label noise {labeled['label_noise']}",
        f"per subject: {per_subject}",
        f"pool: {pool['pairs']} pairs ({pool['with_motion']} with movement, {pool['noise_only']} noise only; "
        f"pool-only subjects: {', '.join(summary['pool_only_subjects']) or 'none'})",
        *(_raw_release_lines(summary, out) if args["raw_release"] else _threshold_lines(pool)),
        f"largest AU displacement: {summary['max_au_displacement_px']} px",
    ])


def _threshold_lines(pool: dict) -> list[str]:
    """What the best intensity threshold of a prepared layout's pool keeps and drops."""
    return [f"intensity threshold {pool['intensity_threshold']} keeps {pool['kept']} and drops {pool['dropped']} "
            f"({pool['motion_kept']}/{pool['with_motion']} moving pairs kept, "
            f"{pool['noise_dropped']}/{pool['noise_only']} noise-only pairs dropped)"]


def _raw_release_lines(summary: dict, out: Path) -> list[str]:
    """Where a raw release's frames went, and the command that prepares it."""
    frames, pool = summary["frames"], summary["pool"]
    return [f"frames: {frames[PART_A]} in {PART_A}, {frames[PART_B]} in {PART_B}; pool pairs: {pool['part_a']} in "
            f"{PART_A}, {pool['part_b']} in {PART_B}; truth: {out / GROUND_TRUTH_NAME}",
            f"prepare: python scripts/data/prepare_casme3.py --root {out / PART_A} --part_b_root {out / PART_B} "
            f"--annotation \"{out / ANNOTATION_NAME}\" --out OUT --classes {summary['arguments']['n_classes']} "
            f"--image_size {summary['arguments']['image_size']} [--motion_compensation]"]


def main(argv: list[str] | None = None) -> int:
    """Generate the dataset and print its summary; returns 0 (a bad argument or folder raises
    `util.UserError`, which `util.run_cli` prints as one line with exit code 2)."""
    args = parse_args(argv)
    summary = synthetic.generate_dataset(
        args.out, seed=args.seed, n_subjects=args.subjects, samples_per_subject=args.samples_per_subject,
        pool_per_subject=args.pool_per_subject, pool_only_subjects=args.pool_only_subjects,
        image_size=args.image_size, n_classes=args.classes,
        apex_equals_onset_share=args.apex_equals_onset_share, label_noise=args.label_noise,
        depth_bits=args.depth_bits, motion_compensation=args.motion_compensation, raw_release=args.raw_release,
        regime=make_regime(args.regime, **{name: getattr(args, name) for name in knob_names()}),
        overwrite=args.overwrite)
    print(format_summary(summary, args.out))
    return 0


if __name__ == "__main__":
    run_cli(main)
