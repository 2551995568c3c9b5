"""A report's table as data: typed cells built once, shown as Markdown (markdown.py), LaTeX (latex.py) and CSV.

A cell is text (a name), a count (`int`) or a `Number`: a figure with how it is written (`12.34 ± 0.56
(+1.20)`, bold, a mark). The table says what its numbers are; each format only writes them: Markdown
and LaTeX the text of each cell, CSV the figures themselves (to 12 significant digits, not the
table's 2 decimals), a `Number`'s parts in columns of their own (`lb-pv`, `lb-pv std`, `lb-pv vs body`). Bold and marks are how a table points at its
numbers, not numbers: the CSV leaves them out.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from dataclasses import dataclass

import pandas

MINUS = "\u2212"  # a real minus sign: a hyphen reads as a dash in tables
PLUS_MINUS = "\u00b1"


def number(value: float, decimals: int = 2) -> str:
    """`value` with `decimals` decimals and a real minus sign; blank for NaN."""
    return _formatted(value, f".{decimals}f")


def _formatted(value: float, style: str) -> str:
    """`value` in the format spec `style` (".2f", ",.0f", "+.2f", ".1%"), a real minus sign; blank for NaN."""
    return "" if _missing(value) else format(value, style).replace("-", MINUS)


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class Number:
    """A figure as a table shows it: `value`, then `± std`, then `(aside)`, e.g. `12.34 ± 0.56 (+1.20)`.

    `style` and `aside_style` are format specs (".2f": 2 decimals; ",.0f": thousands; "+.2f": signed;
    ".1%": a share as a percentage). A missing part (None or NaN) is not shown; a missing value
    is a blank cell. `bold` and `mark` (a sign after the figure, e.g. † for significant) point at it.
    """

    value: float
    style: str = ".2f"
    std: float | None = None
    aside: float | None = None
    aside_style: str = "+.2f"
    bold: bool = False
    mark: str = ""

    def text(self) -> str:
        """The figure and its parts as plain text (Unicode minus and ±), without bold or mark."""
        if _missing(self.value):
            return ""
        text = _formatted(self.value, self.style)
        if not _missing(self.std):
            text += f" {PLUS_MINUS} " + _formatted(self.std, self.style)
        if not _missing(self.aside):
            text += f" ({_formatted(self.aside, self.aside_style)})"
        return text


Cell = str | int | Number  # a count may be a NumPy integer too


@dataclass(frozen=True)
class Column:
    """A column's header, and what its cells' `aside` figures are (for the CSV header: `<name> <aside>`)."""

    name: str
    aside: str = ""


@dataclass(frozen=True)
class Table:
    """One table of the report: rows of cells under columns, the first column naming each row.

    `name` is the file stem of its CSV and LaTeX files (`table2`: table2.csv, table2.tex); `title` says
    what it shows and `note` how to read it (Markdown: `code` spans): LaTeX's caption, while report.md
    has them as the section's heading and first paragraph.
    """

    name: str
    title: str
    note: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[Cell, ...], ...]

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"table {self.name}: a row of {len(row)} cells under {len(self.columns)} columns")

    @classmethod
    def of_frame(cls, frame: pandas.DataFrame, name: str = "", title: str = "", note: str = "") -> Table:
        """A table of text cells: the frame's index as the first column, every value as `str`."""
        columns = (Column(frame.index.name or ""), *(Column(str(column)) for column in frame.columns))
        rows = tuple((str(index), *map(str, values)) for index, values in zip(frame.index, frame.to_numpy()))
        return cls(name, title, note, columns, rows)

    def numeric(self, column: int) -> bool:
        """Whether a column holds figures (`Number`s and counts, blanks allowed) rather than names."""
        cells = [row[column] for row in self.rows if row[column] != ""]
        return bool(cells) and all(isinstance(cell, (numbers.Integral, Number)) for cell in cells)


def table_csv(table: Table) -> str:
    """The table as CSV: a header line, then one line per row; a `Number` is its value, and where its column
    has any, its std (`<column> std`) and aside (`<column> <aside>`) in columns of their own. Figures are
    written to 12 significant digits (far beyond what a score means, short of float noise), blanks (and
    NaN) as empty fields."""
    parts = []  # per column: which of the value's parts it has, as (header, part)
    for index, column in enumerate(table.columns):
        numbers = [row[index] for row in table.rows if isinstance(row[index], Number)]
        parts.append([(column.name, "value")]
                     + ([(f"{column.name} std", "std")] if any(not _missing(n.std) for n in numbers) else [])
                     + ([(f"{column.name} {column.aside or 'aside'}", "aside")]
                        if any(not _missing(n.aside) for n in numbers) else []))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([header for column in parts for header, _ in column])
    for row in table.rows:
        writer.writerow([_csv_field(cell, part) for cell, column in zip(row, parts) for _, part in column])
    return buffer.getvalue()


def _csv_field(cell: Cell, part: str) -> str | int | float:
    if not isinstance(cell, Number):
        return cell if part == "value" else ""
    figure = getattr(cell, part)
    return "" if _missing(figure) else f"{figure:.12g}"


@dataclass(frozen=True)
class Section:
    """A section of report.md ("" when it has nothing to show) and the tables it shows, which report.tex
    and the CSVs hold too."""

    markdown: str
    tables: tuple[Table, ...] = ()
