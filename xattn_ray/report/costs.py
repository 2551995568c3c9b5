"""What runs cost: the means of their training rows, and those means as a table."""

from __future__ import annotations

import pandas

from xattn_ray.report.tables import Column, Number, Table


def mean_costs(rows: pandas.DataFrame, by: str) -> pandas.DataFrame:
    """Means of the training rows of each value of column `by`.

    Columns: runs, trainable_params, share (trainable / total parameters), train_seconds,
    target_tokens_per_second, updates.
    """
    rows = rows.assign(share=lambda r: r["trainable_params"] / r["total_params"])
    return rows.groupby(by).agg(runs=("run_id", "nunique"), trainable_params=("trainable_params", "mean"),
                                share=("share", "mean"), train_seconds=("train_seconds", "mean"),
                                target_tokens_per_second=("target_tokens_per_second", "mean"),
                                updates=("updates", "mean"))


def cost_table_of(costs: pandas.DataFrame, note: str) -> Table:
    """The table `cost` of a `mean_costs` frame: a row per value of its index (a policy, a variant), the
    trainable parameters with their share of all the model's in parentheses."""
    columns = (Column(costs.index.name), Column("runs"), Column("trainable parameters", aside="share"),
               Column("train seconds"), Column("target tokens/s"), Column("updates"))
    rows = tuple((name, int(row.runs), Number(row.trainable_params, ",.0f", aside=row.share, aside_style=".1%"),
                  Number(row.train_seconds, ".1f"), Number(row.target_tokens_per_second, ",.0f"),
                  Number(row.updates, ",.0f")) for name, row in zip(costs.index, costs.itertuples()))
    return Table("cost", "Cost", note, columns, rows)
