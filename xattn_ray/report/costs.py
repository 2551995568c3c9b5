"""What runs cost: the means of their training rows, and those means as text cells."""

from __future__ import annotations

import pandas

from xattn_ray.report.markdown import number


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


def cost_cells(table: pandas.DataFrame) -> pandas.DataFrame:
    """A table of `mean_costs` as text cells."""
    return pandas.DataFrame({
        "runs": table["runs"].astype(int),
        "trainable parameters": [f"{value:,.0f} ({share:.1%})"
                                 for value, share in zip(table["trainable_params"], table["share"])],
        "train seconds": table["train_seconds"].map(lambda value: number(value, 1)),
        "target tokens/s": table["target_tokens_per_second"].map(lambda value: f"{value:,.0f}"),
        "updates": table["updates"].map(lambda value: f"{value:,.0f}"),
    }, index=table.index)
