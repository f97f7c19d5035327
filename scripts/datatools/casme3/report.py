"""The preparation's report: what was skipped, excluded or unusual, and the report files' text."""
from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from dataset import LIST_FOLDER
from util import atomic_write_text


@dataclass(frozen=True)
class ReportItem:
    """One reported row: category 'skipped', 'excluded' or 'anomaly'; `source` names the file/row."""
    category: str
    kind: str
    source: str
    detail: str


class Report:
    """What was skipped, excluded or unusual: itemized for labeled MEs and single folders, counted
    (with a first example) for pool pairs and layout variants that repeat for every video."""

    def __init__(self) -> None:
        self.items: list[ReportItem] = []
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def add(self, category: str, kind: str, source: str, detail: str) -> None:
        """Itemize one row or folder."""
        self.items.append(ReportItem(category, kind, source, detail))

    def count(self, kind: str, detail: str, n: int = 1) -> None:
        """Count `n` occurrences of `kind`, remembering the first example."""
        self.counts[kind] += n
        self.examples.setdefault(kind, detail)

    def kinds(self, category: str) -> Counter[str]:
        """Itemized rows of `category` by kind."""
        return Counter(item.kind for item in self.items if item.category == category)

    def first(self, category: str) -> ReportItem | None:
        """The first itemized row of `category`, if any."""
        return next((item for item in self.items if item.category == category), None)


def _fmt(value: object) -> str:
    """CSV cell text: floats to 6 significant digits, None empty."""
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A CSV file written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_fmt(v) for v in row] for row in rows)
    atomic_write_text(path, buffer.getvalue())


def report_text(report_json: dict) -> str:
    """Human-readable version of the JSON report."""
    lab, pool, classes = report_json["labeled"], report_json["pool"], report_json["classes"]
    settings = report_json["settings"]
    lines = [f"CAS(ME)^3 preparation: {settings['root']} -> {settings['out']}",
             f"classes: {', '.join(f'{i} {c}' for i, c in enumerate(classes))}",
             f"labeled MEs: {lab['samples']} from {lab['annotation_rows']} annotation rows "
             f"({lab['written']} written, {lab['reused']} reused)",
             "", "class counts per subject:",
             "  " + "subject".ljust(10) + "".join(c.rjust(10) for c in classes) + "total".rjust(8)]
    for subject, counts in lab["per_subject"].items():
        lines.append("  " + subject.ljust(10) + "".join(str(counts.get(c, 0)).rjust(10) for c in classes)
                     + str(sum(counts.values())).rjust(8))
    lines.append("  " + "all".ljust(10) + "".join(str(lab["per_class"].get(c, 0)).rjust(10) for c in classes)
                 + str(lab["samples"]).rjust(8))
    for category in ("skipped", "excluded", "anomaly"):
        items = [i for i in report_json["items"] if i["category"] == category]
        lines += ["", f"{category} ({len(items)}):"]
        lines += [f"  [{i['kind']}] {i['source']}: {i['detail']}" for i in items]
    lines += ["", "counted:"]
    lines += [f"  [{kind}] {info['count']}, e.g. {info['example']}"
              for kind, info in report_json["counted"].items()]
    threshold = report_json["threshold"]
    value = "none" if threshold["value"] is None else f"{threshold['value']:.6g} ({threshold['source']})"
    lines += ["", f"intensity measure: {threshold['measure']}; pool threshold: {value}"]
    if pool["enabled"]:
        lines.append(f"pool ({', '.join(pool['parts'])}, gap {pool['gap']}, stride {pool['stride']}): "
                     f"{pool['pairs']} pairs from {pool['videos']} videos; kept {pool['kept']}, dropped "
                     f"{pool['dropped']}, skipped {pool['skipped']} ({pool['written']} written, "
                     f"{pool['reused']} reused)")
    else:
        lines.append("pool: not prepared (--pool none)")
    return "\n".join(lines) + "\n"


def print_summary(report_json: dict, report: Report, out: Path) -> None:
    """The labeled counts, the report's categories with a first example, and where the outputs are."""
    lab = report_json["labeled"]
    print(f"labeled MEs: {lab['samples']} of {lab['annotation_rows']} rows ({lab['written']} written, "
          f"{lab['reused']} reused) over {len(lab['per_subject'])} subjects; "
          + ", ".join(f"{c} {lab['per_class'].get(c, 0)}" for c in report_json["classes"]))
    for category in ("skipped", "excluded", "anomaly"):
        kinds = report.kinds(category)
        if kinds:
            first = report.first(category)
            print(f"{category}: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
                  + f" (e.g. {first.source}: {first.detail})")
    print(f"lists: {out / LIST_FOLDER}; report: {out / 'prepare_report.txt'}")
