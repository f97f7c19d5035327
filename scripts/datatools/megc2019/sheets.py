"""Annotation sheets of CASME II (`CASME2-coding-20140508.xlsx`) and SAMM
(`SAMM_Micro_FACS_Codes_v2.xlsx`).

The header row is the first row, on the first sheet that has one, holding every needed column:
SAMM's sheet opens with rows of description above its header. Column names match without case
and spaces, so CASME II's `OnsetFrame` and SAMM's `Onset Frame` are the same column `onsetframe`.
A file that cannot be read, or has no such header, is one `UserError`.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from util import UserError

CASME2_COLUMNS = ("Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Estimated Emotion")
SAMM_COLUMNS = ("Subject", "Filename", "Onset Frame", "Apex Frame", "Offset Frame", "Estimated Emotion")
HEADER_SEARCH_ROWS = 40  # how far down a sheet its header row may stand


def column_key(name: object) -> str:
    """A header cell as a column key: lower case without whitespace (`Onset Frame` -> `onsetframe`)."""
    return "".join(str(name).split()).lower() if name is not None else ""


@dataclass(frozen=True)
class Sheet:
    """The rows under the header of an annotation sheet, as (sheet row number, {column key: cell})."""
    path: Path
    rows: tuple[tuple[int, dict[str, object]], ...]

    def source(self, row_no: int) -> str:
        """`<file name> row <n>`: where a warning's row stands in the sheet."""
        return f"{self.path.name} row {row_no}"


def read_sheet(path: str | Path, columns: Sequence[str]) -> Sheet:
    """The rows of `path` (`.xlsx` or `.csv`) under its header row; empty rows left out."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: annotation sheet not found")
    needed = {column_key(c) for c in columns}
    for grid in _grids(path):
        for index, row in enumerate(grid[:HEADER_SEARCH_ROWS]):
            keys = [column_key(cell) for cell in row]
            if needed <= set(keys):
                rows = tuple((index + 1 + offset, {k: (r[j] if j < len(r) else None) for j, k in enumerate(keys) if k})
                             for offset, r in enumerate(grid[index + 1:], start=1)
                             if any(str(cell).strip() for cell in r if cell is not None))
                return Sheet(path, rows)
    raise UserError(f"{path}: no header row with the columns {', '.join(columns)} in the first "
                    f"{HEADER_SEARCH_ROWS} rows of any sheet")


def _grids(path: Path) -> list[list[tuple]]:
    """Every sheet of the file as a list of row tuples."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            with path.open(newline="", encoding="utf-8-sig") as handle:
                return [[tuple(row) for row in csv.reader(handle)]]
        except (UnicodeDecodeError, csv.Error) as err:
            raise UserError(f"{path}: cannot read the CSV ({type(err).__name__}: {err})") from None
    if suffix not in (".xlsx", ".xlsm"):
        raise UserError(f"{path}: unsupported annotation format {suffix!r} (use .xlsx or .csv)")
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            return [[tuple(row) for row in sheet.iter_rows(values_only=True)] for sheet in book.worksheets]
        finally:
            book.close()
    except Exception as err:  # openpyxl raises several unrelated types for a damaged file
        raise UserError(f"{path}: cannot read the workbook ({type(err).__name__}: {err})") from None


def cell_text(value: object) -> str:
    """A cell as stripped text ('' when empty); integral floats lose their `.0`."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def cell_number(value: object) -> int | None:
    """A frame or subject number from a cell (int, integral float, digits); None when it is not one."""
    text = cell_text(value)
    return int(text) if text.isdigit() else None
