"""Markdown: the report's tables, and the runs a significance test left out."""

from __future__ import annotations

from collections.abc import Sequence

import pandas

from xattn_ray.report.tables import Cell, Number, Section, Table


def markdown_table(table: Table) -> str:
    """A GitHub-flavoured Markdown table, its first column naming the rows."""
    header = [column.name for column in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(markdown_cell, row)) + " |" for row in table.rows])


def table_section(heading: str, table: Table, after: Sequence[str] = ()) -> Section:
    """The section of one table: `## heading`, the table's note, the table, then the lines `after` it."""
    return Section("\n".join([f"## {heading}", "", table.note, "", markdown_table(table), *after]), (table,))


def markdown_cell(cell: Cell) -> str:
    """A cell's Markdown: a `Number`'s text, `**bold**` when it is, then its mark; text with `|` escaped."""
    if isinstance(cell, Number):
        text = cell.text()
        return (f"**{text}**" if cell.bold and text else text) + (cell.mark if text else "")
    return str(cell).replace("|", "\\|")


def markdown_cells(table: Table) -> pandas.DataFrame:
    """The Markdown text of every cell, indexed by the first column's: a table to look cells up in."""
    frame = pandas.DataFrame([[markdown_cell(cell) for cell in row[1:]] for row in table.rows],
                             index=[markdown_cell(row[0]) for row in table.rows],
                             columns=[column.name for column in table.columns[1:]])
    frame.index.name = table.columns[0].name
    return frame


def untested_lines(tests: pandas.DataFrame, describe) -> list[str]:
    """"Not tested:" and, per reason, the runs (`describe(run)`) a significance test could not pair."""
    untested = tests[tests["p_value"].isna()]
    if untested.empty:
        return []
    return ["", "Not tested:"] + [f"- {note}: " + ", ".join(describe(run) for run in runs.itertuples())
                                  for note, runs in untested.groupby("note", sort=False)]
