"""Print one table (acc / UF1 / UAR) from evaluation results, with paired differences to a baseline.

Usage: python scripts/experiments/results_table.py [--baseline TEXT] [--plot PNG] "LABEL=PATH[,PATH...]" ...
PATH is a run folder (or the results.json in it). With several paths (runs of several
pre-training seeds, say) or one run of several evaluation seeds the table shows mean ± std.
Results over several databases (MEGC2019 composite) get one more row per database, pooled within it.

With --baseline, every row is compared with its baseline row: the row whose label has TEXT as one
comma-separated field where the row has its own, the other fields equal ("default, DVSCL, frozen
LOSO" against "default, random init, frozen LOSO"). The difference row gives the mean paired
difference of UF1 and UAR, its 95 % bootstrap interval and the share of resamples above zero: the
units (LOSO subjects or k-fold folds) and, for rows of several runs, the runs are resampled, the two
rows alike (run i against baseline run i), and UF1 and UAR are recomputed on each resample's pooled
predictions (predictions.csv). The encoders' rows get their UAR interval in the same way.
"""
from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from evaluation.metrics import Interval, Resamples, RunConfusions, plot_comparison  # noqa: E402
import util  # noqa: E402
from util import ArgumentParser, UserError, run_cli  # noqa: E402

PROTOCOLS = {"loso": "LOSO", "kfold": "k-fold probe"}
RESAMPLES = 10000


def read_results(path: Path) -> dict:
    """The results.json at `path` (or in the run folder `path`)."""
    if path.is_dir():
        path = path / "results.json"
    results = util.read_json(path, "results")
    missing = [key for key in ("protocol", "acc", "uf1", "uar") if not isinstance(results, dict) or key not in results]
    if missing:
        raise UserError(f"{path}: damaged results (no {', '.join(missing)}); run the evaluation's --aggregate_only")
    return results


def read_confusions(path: Path, n_classes: int) -> RunConfusions:
    """The per-unit confusion matrices of the run at `path` (its predictions.csv)."""
    folder = path if path.is_dir() else path.parent
    csv_path = folder / "predictions.csv"
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: predictions not found (a difference needs every prediction of the run)")
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    seeds = sorted({row["seed"] for row in rows}, key=int)
    units = sorted({row["unit"] for row in rows})
    confusion = np.zeros((len(seeds), len(units), n_classes, n_classes))
    seed_index, unit_index = {s: i for i, s in enumerate(seeds)}, {u: i for i, u in enumerate(units)}
    for row in rows:
        confusion[seed_index[row["seed"]], unit_index[row["unit"]], int(row["label"]), int(row["prediction"])] += 1
    return RunConfusions(units, confusion, frozenset((row["unit"], row["sample"]) for row in rows))


@dataclass
class Row:
    """One label's runs: their results.json and the paths they came from."""
    label: str
    paths: list[Path]
    runs: list[dict]

    @property
    def fields(self) -> list[str]:
        return [field.strip() for field in self.label.split(",")]

    def confusions(self) -> list[RunConfusions]:
        return [read_confusions(path, len(run["confusion"])) for path, run in zip(self.paths, self.runs)]


def parse_row(spec: str) -> Row:
    """`LABEL=PATH[,PATH...]` -> its Row (runs of one protocol)."""
    if "=" not in spec:
        raise UserError(f"{spec!r}: expected LABEL=PATH[,PATH...]")
    label, paths = spec.split("=", 1)
    row = Row(label, [Path(p) for p in paths.split(",") if p], [])
    if not row.paths:
        raise UserError(f"{spec!r}: no path after '='")
    row.runs = [read_results(path) for path in row.paths]
    protocols = {r.get("protocol") for r in row.runs}
    if len(protocols) > 1:
        raise UserError(f"{spec!r}: runs of different protocols ({', '.join(sorted(map(str, protocols)))})")
    return row


def over_runs(runs: list[dict]) -> dict:
    """acc/UF1/UAR of several runs (e.g. one per pre-training seed): mean and sample std of the
    runs' values; the mean ± std over evaluation seeds of a single run as it is."""
    if len(runs) == 1:
        return runs[0]
    out = {"n_samples": runs[0].get("n_samples", "")}
    for metric in ("acc", "uf1", "uar"):
        values = [r[metric] for r in runs]
        out[metric], out[f"{metric}_std"] = float(np.mean(values)), float(np.std(values, ddof=1))
    return out


def table_rows(row: Row) -> list[list[str]]:
    """Rows [label, protocol, acc, UF1, UAR, n, ""]: the composite, then one per database when the
    results have them. Several runs give the mean ± std over them; one run with several
    evaluation seeds, its own mean ± std."""
    several = len(row.runs) > 1 or len(row.runs[0].get("seeds", {})) > 1

    def cells(metrics: dict) -> list[str]:
        return [f"{metrics[m]:.3f}" + (f" ± {metrics[m + '_std']:.3f}" if several else "")
                for m in ("acc", "uf1", "uar")] + [str(metrics.get("n_samples", "")), ""]

    protocol = protocol_name(row)
    out = [[row.label, protocol, *cells(over_runs(row.runs))]]
    for database in row.runs[0].get("per_database", {}):
        per_run = [r["per_database"][database] for r in row.runs if database in r.get("per_database", {})]
        out.append([f"  {database}", protocol, *cells(over_runs(per_run))])
    return out


def protocol_name(row: Row) -> str:
    protocol = PROTOCOLS.get(row.runs[0].get("protocol"), row.runs[0].get("protocol", "?"))
    return protocol + ("" if all(r.get("complete", True) for r in row.runs) else " (partial)")


def baseline_of(row: Row, baselines: list[Row], text: str) -> Row | None:
    """The baseline row `row` is compared with: the one whose fields equal the row's except that
    the field where the baseline has `text` differs, of the same protocol; None if there is none."""
    for base in baselines:
        position = base.fields.index(text)
        if (len(base.fields) == len(row.fields) and base.runs[0].get("protocol") == row.runs[0].get("protocol")
                and all(a == b for i, (a, b) in enumerate(zip(base.fields, row.fields)) if i != position)):
            return base
    return None


@dataclass
class Comparison:
    """A row's UAR interval and, against its baseline, the paired differences (None for a baseline)."""
    row: Row
    own: dict[str, Interval]
    difference: dict[str, Interval] | None
    baseline: Row | None


def compare(rows: list[Row], text: str, resamples: int = RESAMPLES) -> list[Comparison]:
    """Every row's interval, and the paired difference of each non-baseline row to its baseline."""
    baselines = [row for row in rows if text in row.fields]
    if not baselines:
        raise UserError(f"--baseline {text!r}: no row has it as a label field (fields are split at commas)")
    comparisons = []
    for row in rows:
        base = None if row in baselines else baseline_of(row, baselines, text)
        runs = row.confusions()
        base_runs = base.confusions() if base is not None else None
        if base_runs is not None:
            check_paired(row, runs, base, base_runs)
        draws = Resamples(len(runs[0].units), len(runs), resamples)
        comparisons.append(Comparison(row, draws.interval(runs),
                                      draws.interval(runs, base_runs) if base_runs is not None else None, base))
    return comparisons


def check_paired(row: Row, runs: list[RunConfusions], base: Row, base_runs: list[RunConfusions]) -> None:
    """A `UserError` unless the two rows hold as many runs, each over the same units and samples."""
    if len(runs) != len(base_runs):
        raise UserError(f"{row.label!r} has {len(runs)} runs, its baseline {base.label!r} {len(base_runs)}: "
                        "a paired difference needs one baseline run per run (same order)")
    for path, run, base_path, base_run in zip(row.paths, runs, base.paths, base_runs):
        if run.tested != base_run.tested or run.units != runs[0].units:
            raise UserError(f"{path} and {base_path}: not the same units and samples, so not a paired comparison")


def difference_cells(comparison: Comparison, text: str) -> list[str]:
    """The difference row's cells [label, protocol, acc, UF1, UAR, n, share above zero]."""
    diff = comparison.difference

    def cell(metric: str) -> str:
        i = diff[metric]
        return f"{i.estimate:+.3f} [{i.low:+.3f}, {i.high:+.3f}]"

    return [f"  minus {text}", protocol_name(comparison.row), f"{diff['acc'].estimate:+.3f}",
            cell("uf1"), cell("uar"), "", f"{diff['uar'].above_zero:.2f}"]


def format_table(rows: list[list[str]]) -> str:
    header = ["", "protocol", "acc", "UF1", "UAR", "n", "P(UAR diff > 0)"]
    keep = len(header) if any(r[-1] for r in rows) else len(header) - 1
    header, rows = header[:keep], [r[:keep] for r in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def diagnostics_table(rows: list[Row]) -> str:
    """Per row, the mean over its runs of each run's mean final training loss and encoder weight
    change (results.json's `diagnostics`); '-' where a run has none (a frozen encoder)."""
    lines = [["", "final train loss", "encoder change"]]
    for row in rows:
        found = [run.get("diagnostics", {}) for run in row.runs]
        lines.append([row.label, *(f"{np.mean([d[key] for d in found]):.3f}" if all(key in d for d in found) else "-"
                                   for key in ("final_train_loss", "encoder_change"))])
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in lines)


def print_comparison(rows: list[Row], args: argparse.Namespace) -> None:
    """The table with each row's paired difference to its baseline, and the forest plot with --plot."""
    comparisons = compare(rows, args.baseline)
    lines = []
    for comparison in comparisons:
        lines += table_rows(comparison.row)
        if comparison.difference is not None:
            lines.append(difference_cells(comparison, args.baseline))
    print(format_table(lines))
    print(f"differences: paired, mean over runs; [95 % interval] and P from {RESAMPLES} bootstrap resamples of "
          "subjects or folds (and of runs)")
    if args.plot is not None:
        plot_comparison([(c.row.label, c.own["uar"], c.difference["uar"] if c.difference else None)
                         for c in comparisons], args.baseline, args.plot)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser("results_table.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=PATH[,PATH...]")
    parser.add_argument("--baseline", metavar="TEXT", default=None,
                        help="label field of the baseline rows (e.g. 'random init'): add paired differences "
                             "with 95 %% bootstrap intervals (default: none)")
    parser.add_argument("--diagnostics", action="store_true",
                        help="add each row's mean final training loss and, fine-tuned, the encoder's mean relative "
                             "weight change ||w - w0|| / ||w0|| (default: off)")
    parser.add_argument("--plot", metavar="PNG", type=Path, default=None,
                        help="with --baseline: write a forest plot of every row's UAR and difference (default: none)")
    args = parser.parse_args(argv)
    if args.plot is not None and args.baseline is None:
        parser.error("--plot needs --baseline")
    rows = [parse_row(spec) for spec in args.runs]
    if args.baseline is None:
        print(format_table([cells for row in rows for cells in table_rows(row)]))
    else:
        print_comparison(rows, args)
    if args.diagnostics:
        print("\ntraining (means over units, then over runs)\n" + diagnostics_table(rows))


if __name__ == "__main__":
    run_cli(main)
