"""The report of a preparation: what was left out, excluded, estimated or unusual, each row or
folder with its reason, and the report's tables and text."""
from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from util import atomic_write_text


@dataclass(frozen=True)
class ReportItem:
    """One reported row or folder: `category` ('skipped', 'excluded', 'anomaly', ...), `kind` the
    reason, `source` the file and row or folder, `detail` what happened."""
    category: str
    kind: str
    source: str
    detail: str


class Report:
    """What was skipped, excluded or unusual: itemized for samples and single folders, counted
    (with a first example) for what repeats for every video or pool pair."""

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

    def item_lines(self, sections: Sequence[tuple[str, str]]) -> list[str]:
        """For each (category, title): a blank line, `<title> (<n>):` and one line an item."""
        lines = []
        for category, title in sections:
            items = [item for item in self.items if item.category == category]
            lines += ["", f"{title} ({len(items)}):"] + [f"  [{i.kind}] {i.source}: {i.detail}" for i in items]
        return lines


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
