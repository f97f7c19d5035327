"""Print one table (acc / UF1 / UAR) from evaluation results.

Usage: python scripts/results_table.py "LABEL=PATH" ["LABEL=PATH" ...]
PATH is a results.json or the run folder holding it. With several seeds the table shows mean ± std.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from util import UserError, run_cli  # noqa: E402

PROTOCOLS = {"loso": "LOSO", "kfold": "k-fold probe"}


def read_row(spec: str) -> list[str]:
    """`LABEL=PATH` -> [label, protocol, acc, UF1, UAR, predictions]."""
    if "=" not in spec:
        raise UserError(f"{spec!r}: expected LABEL=PATH")
    label, path = spec.split("=", 1)
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise UserError(f"{path}: results not found")
    results = json.loads(path.read_text())
    several = len(results.get("seeds", {})) > 1
    cells = [f"{results[m]:.3f}" + (f" ± {results[m + '_std']:.3f}" if several else "")
             for m in ("acc", "uf1", "uar")]
    protocol = PROTOCOLS.get(results.get("protocol"), results.get("protocol", "?"))
    if not results.get("complete", True):
        protocol += " (partial)"
    return [label, protocol, *cells, str(results.get("n_samples", ""))]


def format_table(rows: list[list[str]]) -> str:
    header = ["", "protocol", "acc", "UF1", "UAR", "n"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser("results_table.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=PATH")
    args = parser.parse_args(argv)
    print(format_table([read_row(spec) for spec in args.runs]))


if __name__ == "__main__":
    run_cli(main)
