"""Print one table (acc / UF1 / UAR) from evaluation results.

Usage: python scripts/results_table.py "LABEL=PATH[,PATH...]" ["LABEL=PATH" ...]
PATH is a results.json or the run folder holding it. With several paths (runs of several
pre-training seeds, say) or one run of several evaluation seeds the table shows mean ± std.
Results over several databases (MEGC2019 composite) get one more row per database, pooled within it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from util import ArgumentParser, UserError, run_cli  # noqa: E402

PROTOCOLS = {"loso": "LOSO", "kfold": "k-fold probe"}


def read_results(path: Path) -> dict:
    """The results.json at `path` (or in the run folder `path`)."""
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise UserError(f"{path}: results not found")
    return json.loads(path.read_text())


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


def read_rows(spec: str) -> list[list[str]]:
    """`LABEL=PATH[,PATH...]` -> rows [label, protocol, acc, UF1, UAR, predictions]: the composite,
    then one per database when the results have them. Several paths give the mean ± std over
    those runs; one path with several evaluation seeds, its own mean ± std."""
    if "=" not in spec:
        raise UserError(f"{spec!r}: expected LABEL=PATH[,PATH...]")
    label, paths = spec.split("=", 1)
    runs = [read_results(Path(p)) for p in paths.split(",") if p]
    if not runs:
        raise UserError(f"{spec!r}: no path after '='")
    protocols = {r.get("protocol") for r in runs}
    if len(protocols) > 1:
        raise UserError(f"{spec!r}: runs of different protocols ({', '.join(sorted(map(str, protocols)))})")
    several = len(runs) > 1 or len(runs[0].get("seeds", {})) > 1

    def cells(metrics: dict) -> list[str]:
        return [f"{metrics[m]:.3f}" + (f" ± {metrics[m + '_std']:.3f}" if several else "")
                for m in ("acc", "uf1", "uar")] + [str(metrics.get("n_samples", ""))]

    protocol = PROTOCOLS.get(runs[0].get("protocol"), runs[0].get("protocol", "?"))
    if not all(r.get("complete", True) for r in runs):
        protocol += " (partial)"
    rows = [[label, protocol, *cells(over_runs(runs))]]
    for database in runs[0].get("per_database", {}):
        per_run = [r["per_database"][database] for r in runs if database in r.get("per_database", {})]
        rows.append([f"  {database}", protocol, *cells(over_runs(per_run))])
    return rows


def format_table(rows: list[list[str]]) -> str:
    header = ["", "protocol", "acc", "UF1", "UAR", "n"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser("results_table.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=PATH[,PATH...]")
    args = parser.parse_args(argv)
    print(format_table([row for spec in args.runs for row in read_rows(spec)]))


if __name__ == "__main__":
    run_cli(main)
