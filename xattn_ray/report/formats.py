"""Output formats of `xattn-ray results`: an aligned text table, CSV, JSON and Parquet of a pyarrow table."""

from __future__ import annotations

import csv
import decimal
import io
import json
import math
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq


def text_table(table: pa.Table) -> str:
    """Aligned columns for reading: numbers to the right, floats to 2 decimals, nulls blank."""
    right = [pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) for t in table.schema.types]
    lines = [table.column_names] + [[_table_cell(value) for value in row] for row in _rows(table)]
    widths = [max(len(line[i]) for line in lines) for i in range(table.num_columns)]
    return "".join("  ".join(cell.rjust(width) if numeric else cell.ljust(width)
                             for cell, width, numeric in zip(line, widths, right)).rstrip() + "\n" for line in lines)


def _table_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, (dict, list)):
        return _nested_text(value)
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else str(value)


def _rows(table: pa.Table):
    """The table's rows as tuples of Python values, a map (`options`) as a dict."""
    return zip(*(column.to_pylist(maps_as_pydicts="strict") for column in table.columns))


def _nested_text(value: dict | list) -> str:
    """A map or list (`options`, `valid_losses`) in one cell: as JSON."""
    return json.dumps(_finite(value), default=_json_default)


def csv_text(table: pa.Table) -> str:
    """The rows as CSV with a header line; nulls are empty fields."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.column_names)
    writer.writerows([_nested_text(value) if isinstance(value, (dict, list)) else value for value in row]
                     for row in _rows(table))  # None is written as an empty field
    return buffer.getvalue()


def json_text(table: pa.Table) -> str:
    """The rows as one JSON array of objects."""
    return json.dumps(_finite(table.to_pylist(maps_as_pydicts="strict")), default=_json_default) + "\n"


def _finite(value):
    """`value` with every NaN and infinity inside it made None: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {name: _finite(item) for name, item in value.items()}
    return [_finite(item) for item in value] if isinstance(value, list) else value


def _json_default(value):
    """Values JSON has no type for: times become ISO text, decimals (DuckDB's sums) numbers."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def parquet_bytes(table: pa.Table) -> bytes:
    """The rows as a Parquet file's bytes."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
