"""Annotation spreadsheets (`.xlsx`, `.xls`, `.csv`) read into rows keyed by column.

The header row is the first row, among the first `HEADER_SEARCH_ROWS` of a sheet, that holds every
needed column, so rows of description above it (SAMM's) are skipped. Without `sheet`, every sheet
of a workbook is searched in order, the `prefer` sheet first. Column names match without case and
whitespace (`column_key`): CASME II's `OnsetFrame` and SAMM's `Onset Frame` are the one column
`onsetframe`. Row numbers are the sheet's own (a CSV's line numbers); empty rows are left out. A
file that cannot be read, a missing sheet or a missing column is one `UserError` naming the file.
"""
from __future__ import annotations

import contextlib
import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from util import UserError

HEADER_SEARCH_ROWS = 40  # how far down a sheet its header row may stand


def column_key(name: object) -> str:
    """A header cell as a column key: lower case without whitespace (`Onset Frame` -> `onsetframe`)."""
    return "".join(str(name).split()).lower() if name is not None else ""


@dataclass(frozen=True)
class Sheet:
    """The rows under the header row, as (row number, {column key: cell}); `headers` as written."""
    path: Path
    sheet: str | None
    headers: tuple[str, ...]
    rows: tuple[tuple[int, dict[str, object]], ...]

    @property
    def name(self) -> str:
        """The file (and sheet) for messages."""
        return f"{self.path}" + (f" (sheet {self.sheet!r})" if self.sheet else "")

    def source(self, row_no: int) -> str:
        """`<file name> row <n>`: where a reported row stands."""
        return f"{self.path.name} row {row_no}"


def read_sheet(path: str | Path, columns: Sequence[str], sheet: str | None = None,
               prefer: str | None = None) -> Sheet:
    """The rows of `path` under its header row holding `columns`; `sheet` names the only sheet to
    search, `prefer` the one to search first."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    needed = [column_key(c) for c in columns]
    closest: tuple[int, str | None, int, list[str]] | None = None  # (columns found, sheet, row, missing)
    with contextlib.closing(_grids(path, sheet, prefer)) as grids:
        for name, grid in grids:
            for index, row in enumerate(grid[:HEADER_SEARCH_ROWS]):
                keys = [column_key(cell) for cell in row]
                missing = [c for c, key in zip(columns, needed) if key not in keys]
                if not missing:
                    rows = tuple((number, {k: (r[j] if j < len(r) else None) for j, k in enumerate(keys) if k})
                                 for number, r in enumerate(grid[index + 1:], start=index + 2)
                                 if any(map(filled, r)))
                    return Sheet(path, name, tuple(cell_text(c) for c in row), rows)
                if closest is None or len(columns) - len(missing) > closest[0]:
                    closest = (len(columns) - len(missing), name, index + 1, missing)
    hint = ""
    if closest is not None and closest[0]:
        where = f"row {closest[2]}" + (f" of sheet {closest[1]!r}" if closest[1] else "")
        hint = f" (closest: {where}, without {', '.join(map(repr, closest[3]))})"
    scope = " of any sheet" if sheet is None and path.suffix.lower() != ".csv" else ""
    raise UserError(f"{path}: no header row with the columns {', '.join(columns)} in the first "
                    f"{HEADER_SEARCH_ROWS} rows{scope}{hint}")


def _grids(path: Path, sheet: str | None, prefer: str | None) -> Iterator[tuple[str | None, list[tuple]]]:
    """(sheet name, rows) of each sheet to search; a CSV is one grid without a name."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield None, _csv_rows(path)
    elif suffix in (".xlsx", ".xlsm", ".xls"):
        yield from _workbook_grids(path, sheet, prefer, suffix == ".xls")
    else:
        raise UserError(f"{path}: unsupported spreadsheet format {suffix!r} (use .xlsx, .xls or .csv)")


def _csv_rows(path: Path) -> list[tuple]:
    """The rows of a UTF-8 CSV (a byte-order mark is dropped)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read the CSV ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: byte 0x{data[err.start]:02x} is not UTF-8 (save the file as UTF-8)") from None
    try:
        return [tuple(row) for row in csv.reader(io.StringIO(text, newline=""))]
    except csv.Error as err:
        raise UserError(f"{path}: cannot read the CSV ({err})") from None


def _workbook_grids(path: Path, sheet: str | None, prefer: str | None,
                    old_format: bool) -> Iterator[tuple[str, list[tuple]]]:
    """(sheet name, rows) of the workbook's sheets, read one at a time (openpyxl, or xlrd for .xls)."""
    try:
        if old_format:
            import xlrd

            book = xlrd.open_workbook(str(path))
            names, read, close = book.sheet_names(), (lambda name: _xls_rows(book, name)), book.release_resources
        else:
            import openpyxl

            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
            names, close = book.sheetnames, book.close
            read = lambda name: [tuple(row) for row in book[name].iter_rows(values_only=True)]  # noqa: E731
    except Exception as err:  # openpyxl and xlrd raise many unrelated types for a damaged file
        raise UserError(f"{path}: cannot read the workbook ({type(err).__name__}: {err})") from None
    try:
        if sheet is not None and sheet not in names:
            raise UserError(f"{path}: no sheet {sheet!r} (sheets: {', '.join(names)})")
        order = [sheet] if sheet is not None else sorted(names, key=lambda name: name != prefer)
        for name in order:
            try:
                grid = read(name)
            except Exception as err:
                raise UserError(f"{path}: cannot read sheet {name!r} ({type(err).__name__}: {err})") from None
            yield name, grid
    finally:
        close()


def _xls_rows(book, name: str) -> list[tuple]:
    table = book.sheet_by_name(name)
    return [tuple(table.row_values(i)) for i in range(table.nrows)]


def filled(value: object) -> bool:
    """Whether a cell holds anything but whitespace."""
    return value is not None and str(value).strip() != ""


def cell_text(value: object) -> str:
    """A cell as stripped text ('' when empty); an integral float loses its `.0`."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def cell_int(value: object) -> int | None:
    """A whole number from a cell (int, integral float, or text of one); None when empty.
    ValueError (holding the cell) for anything else."""
    if not filled(value):
        return None
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        if float(value).is_integer():
            return int(value)
        raise ValueError(value)
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError(value) from None
    if not number.is_integer():
        raise ValueError(value)
    return int(number)
