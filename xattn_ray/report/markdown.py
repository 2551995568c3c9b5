"""Markdown pieces every section of the report uses: tables, numbers, and the runs a test left out."""

from __future__ import annotations

import pandas

MINUS = "\u2212"  # a real minus sign: a hyphen reads as a dash in tables


def markdown_table(table: pandas.DataFrame) -> str:
    """A GitHub-flavoured Markdown table, the index as its first column."""
    header = [table.index.name or "", *map(str, table.columns)]
    rows = [[str(index), *map(str, values)] for index, values in zip(table.index, table.to_numpy())]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def number(value: float, decimals: int = 2) -> str:
    """`value` with `decimals` decimals and a real minus sign; blank for NaN."""
    return "" if value != value else f"{value:.{decimals}f}".replace("-", MINUS)


def mean_std(mean: float, std: float, seeds: int) -> str:
    """`mean ± std`, the mean alone for one seed."""
    return number(mean) + (f" ± {std:.2f}" if seeds > 1 else "")


def signed(value: float) -> str:
    """A difference with its sign, `+` or a real minus, to 2 decimals."""
    return ("+" if value >= 0 else MINUS) + f"{abs(value):.2f}"


def untested_lines(tests: pandas.DataFrame, describe) -> list[str]:
    """"Not tested:" and, per reason, the runs (`describe(run)`) a significance test could not pair."""
    untested = tests[tests["p_value"].isna()]
    if untested.empty:
        return []
    return ["", "Not tested:"] + [f"- {note}: " + ", ".join(describe(run) for run in runs.itertuples())
                                  for note, runs in untested.groupby("note", sort=False)]
