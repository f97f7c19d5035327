"""How large a comparison must be to resolve a given UAR difference: variance components of a paired
difference measured on a pilot, and the cheapest study scale they predict.

    python scripts/experiments/study_scale.py --pilot "BASELINE_RUN,...=ENCODER_RUN,..." [--pilot ...] \
        --pilot_subjects 30 --pretrain_minutes 9 --eval_minutes 0.6 [--half_width 0.025]

Each --pilot pairs the runs of one protocol: baseline run i (random init, evaluated with --seed S_i
--seeds E) against encoder run i (pre-trained with --seed i, evaluated with the same flags). From
their predictions it estimates, for the paired difference D of UAR:

    sigma_subject^2  the unit bootstrap's variance of mean D (runs fixed), times the pilot's subjects
    sigma_eval^2     the variance of D between evaluation seeds within a run (unit seeds, head
                     initialisation and, for random init, the random encoder itself)
    sigma_pre^2      the variance of a run's mean D between pre-training seeds, less sigma_eval^2 / E

and predicts Var(mean D) = sigma_subject^2 / S + sigma_pre^2 / R + sigma_eval^2 * (S0 / S) / (R E) for S
labeled subjects, R pre-training seeds and E evaluation seeds (evaluation noise shrinks with the test
set, pre-training noise does not). The interval's half-width is about 2 sqrt(Var). Cost in CPU-minutes:
R pre-trainings, plus R E evaluations of both encoders whose cost grows with S^2 (each of S units trains
on the other subjects). It prints the grid and the cheapest (S, R, E) within the half-width.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import util  # noqa: E402
from evaluation.metrics import Resamples, RunConfusions, confusion_scores  # noqa: E402
from scripts.experiments.results_table import read_confusions, read_results  # noqa: E402


def components(baseline: list[RunConfusions], encoder: list[RunConfusions], subjects: int) -> dict[str, float]:
    """sigma_subject^2, sigma_eval^2 and sigma_pre^2 of the paired UAR difference (see the module
    docstring); runs hold E evaluation seeds each, confusions (E, U, K, K)."""
    per_seed = np.array([[m - b for m, b in zip(_seed_uars(e), _seed_uars(r))] for e, r in zip(encoder, baseline)])
    runs, seeds = per_seed.shape
    eval_var = float(per_seed.var(axis=1, ddof=1).mean()) if seeds > 1 else float("nan")
    pre_var = max(0.0, float(per_seed.mean(axis=1).var(ddof=1)) - (0.0 if seeds == 1 else eval_var / seeds))
    draws = Resamples(len(encoder[0].units), 1, 4000, seed=1).unit_weights
    mean_diff = np.mean([e.scores(draws)["uar"] - b.scores(draws)["uar"] for e, b in zip(encoder, baseline)], axis=0)
    return {"subject": float(mean_diff.var()) * subjects, "eval": eval_var, "pre": pre_var, "runs": runs,
            "eval_seeds": seeds, "mean": float(per_seed.mean())}


def _seed_uars(run: RunConfusions) -> np.ndarray:
    """(E,) the pooled UAR of each evaluation seed."""
    return confusion_scores(run.confusion.sum(axis=1))["uar"]


def predicted_half_width(c: dict[str, float], s: int, r: int, e: int, s0: int) -> float:
    """About two standard errors of the mean difference at S subjects, R pre-training and E evaluation seeds."""
    eval_var = 0.0 if np.isnan(c["eval"]) else c["eval"]
    return 2 * float(np.sqrt(c["subject"] / s + c["pre"] / r + eval_var * (s0 / s) / (r * e)))


def main(argv: list[str] | None = None) -> None:
    parser = util.ArgumentParser("study_scale.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pilot", action="append", required=True, metavar="BASE,...=ENC,...",
                        help="one protocol's paired runs: baseline run folders = encoder run folders (same order)")
    parser.add_argument("--pilot_subjects", type=util.POSITIVE_INT, required=True, help="labeled subjects of the pilot")
    parser.add_argument("--pretrain_minutes", type=util.POSITIVE, required=True,
                        help="CPU-minutes of one pre-training (independent of the labeled subjects)")
    parser.add_argument("--eval_minutes", type=util.POSITIVE, required=True,
                        help="CPU-minutes of all protocols' evaluations of one encoder and one evaluation seed at the "
                             "pilot's subjects (scales with subjects^2)")
    parser.add_argument("--half_width", type=util.POSITIVE, default=0.025, help="target half-width of the interval")
    args = parser.parse_args(argv)
    found = []
    for spec in args.pilot:
        base, _, enc = spec.partition("=")
        runs = [[read_confusions(Path(p), len(read_results(Path(p))["confusion"])) for p in side.split(",") if p]
                for side in (base, enc)]
        if not enc or len(runs[0]) != len(runs[1]) or len(runs[0]) < 2:
            raise util.UserError(f"--pilot {spec!r}: expected two equal lists of at least 2 run folders around '='")
        c = components(*runs, args.pilot_subjects)
        found.append(c)
        print(f"{Path(base.split(',')[0]).name} ...: mean difference {c['mean']:+.3f} over {c['runs']} runs x "
              f"{c['eval_seeds']} evaluation seeds; sigma_subject {np.sqrt(c['subject']):.3f}, sigma_pre "
              f"{np.sqrt(c['pre']):.3f}, sigma_eval {np.sqrt(c['eval']):.3f}")
    grid = []
    for s, r, e in itertools.product((10, 20, 30, 60, 95, 150, 300), (3, 5, 10, 20, 40), (1, 2, 3, 5)):
        width = max(predicted_half_width(c, s, r, e, args.pilot_subjects) for c in found)
        cost = r * args.pretrain_minutes + 2 * r * e * args.eval_minutes * (s / args.pilot_subjects) ** 2
        grid.append((cost, s, r, e, width))
    print(f"\n{'subjects':>8} {'pre-training seeds':>18} {'evaluation seeds':>16} {'half-width':>10} {'CPU-minutes':>11}")
    for cost, s, r, e, width in sorted(grid):
        if width <= args.half_width * 1.6:
            print(f"{s:>8} {r:>18} {e:>16} {width:>10.3f} {cost:>11.0f}" + (" <-" if width <= args.half_width else ""))
    meeting = [g for g in sorted(grid) if g[4] <= args.half_width]
    if meeting:
        cost, s, r, e, width = meeting[0]
        print(f"\ncheapest within +-{args.half_width}: {s} subjects, {r} pre-training seeds, {e} evaluation seeds "
              f"(half-width {width:.3f}, about {cost:.0f} CPU-minutes)")
    else:
        print(f"\nno scale of the grid reaches +-{args.half_width}")


if __name__ == "__main__":
    util.run_cli(main)
