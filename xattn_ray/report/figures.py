"""The report's PNG figures (matplotlib) and the Markdown section that shows them."""

from __future__ import annotations

import io

import pandas

from xattn_ray.report.codeswitch import codeswitch_bleu
from xattn_ray.report.rows import (CODESWITCH_KINDS, codeswitch_tests, is_codeswitch_study, ok_rows, ordered_columns,
                                   ordered_pairs, ordered_policies, ordered_variants, primary_child_tests)
from xattn_ray.report.transfer import child_bleu

FIGURE_DPI = 150
CAPTIONS = {"bleu_by_pair.png": "BLEU by child pair and policy (error bars: standard deviation over seeds)",
            "valid_curves.png": "Validation loss during training, one line per seed",
            "bleu_vs_params.png": "BLEU against trainable parameters",
            "bleu_by_kind.png": "BLEU by variant on single sentences (mono), seen and unseen code-switched pairs "
                                "(error bars: standard deviation over seeds)"}


def render_figures(frame: pandas.DataFrame) -> dict[str, bytes]:
    """The PNG figures the rows allow, by file name, in the order the report shows them; nothing is written."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, safe in any process
    rendered = {}
    drawings = ((("bleu_by_kind.png", _bleu_by_kind),) if is_codeswitch_study(frame) else
                (("bleu_by_pair.png", _bleu_by_pair), ("valid_curves.png", _valid_curves),
                 ("bleu_vs_params.png", _bleu_vs_params)))
    for name, draw in drawings:
        figure = draw(frame)
        if figure is not None:
            rendered[name] = _png(figure)
    return rendered


def figures_section(figures: list[str]) -> str:
    """The report's section showing `figures` (file names beside report.md) with their captions; "" for none."""
    if not figures:
        return ""
    return "\n".join(["## Figures", ""] + [f"![{CAPTIONS[name]}]({name})\n" for name in figures]).rstrip()


def _colors(names: list[str]) -> dict[str, object]:
    """One color per name (a policy, a kind of test set), the same in every figure."""
    import matplotlib.pyplot as plt

    cycle = plt.get_cmap("tab10").colors
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def _bleu_by_pair(frame: pandas.DataFrame):
    summary = child_bleu(frame)
    if summary.empty:
        return None
    columns = ordered_columns(primary_child_tests(frame))  # a pair, or a pair's grid cells
    policies = ordered_policies(summary["policy"])
    bars = {policy: summary[summary["policy"] == policy].set_index("column").reindex(columns) for policy in policies}
    return _bar_chart(columns, bars, _colors(policies), xlabel="child pair", title="BLEU by pair and policy",
                      legend="policy")


def _bleu_by_kind(frame: pandas.DataFrame):
    summary = codeswitch_bleu(frame)
    if summary.empty:
        return None
    variants = ordered_variants(codeswitch_tests(frame))
    kinds = [kind for kind in CODESWITCH_KINDS if kind in set(summary["kind"])]
    bars = {kind: summary[summary["kind"] == kind].set_index("variant").reindex(variants).dropna(subset=["mean"])
            for kind in kinds}
    return _bar_chart(variants, bars, _colors(list(CODESWITCH_KINDS)), xlabel="variant",
                      title="BLEU by variant and kind of test set", legend="test sets", rotation=20, ha="right")


def _bar_chart(groups: list[str], bars: dict[str, pandas.DataFrame], colors: dict[str, object], *, xlabel: str,
               title: str, legend: str, **tick_options):
    """Bars of BLEU with standard-deviation error bars, one of each series side by side in each group.

    `bars[series]`: that series' `mean` and `std` indexed by group (groups without a bar left out or NaN).
    """
    import matplotlib.pyplot as plt

    width = 0.8 / len(bars)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.4 * len(groups) * len(bars) + 2.0), 4))
    for i, (series, cells) in enumerate(bars.items()):
        positions = [groups.index(group) + (i - (len(bars) - 1) / 2) * width for group in cells.index]
        axes.bar(positions, cells["mean"], width, yerr=cells["std"].fillna(0), capsize=3, label=series,
                 color=colors[series])
    axes.set_xticks(range(len(groups)), groups, **tick_options)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("BLEU")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(title=legend, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return figure


def _valid_curves(frame: pandas.DataFrame):
    import matplotlib.pyplot as plt

    train = ok_rows(frame, "train", "child").dropna(subset=["valid_losses"])
    if train.empty:
        return None
    pairs = ordered_pairs(train)
    policies = ordered_policies(train["policy"])
    colors = _colors(policies)
    columns = min(3, len(pairs))
    rows = -(-len(pairs) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(4.2 * columns + 1.5, 3.4 * rows), squeeze=False)
    for axes, pair in zip(grid.flat, pairs):
        for run in train[train["pair"] == pair].sort_values(["policy", "seed"]).itertuples():
            if len(run.valid_losses):
                updates, losses = zip(*((point["update"], point["valid_loss"]) for point in run.valid_losses))
                axes.plot(updates, losses, color=colors[run.policy], linewidth=1, alpha=0.8, marker=".")
        axes.set_title(pair)
        axes.set_xlabel("update")
        axes.set_ylabel("validation loss")
        axes.grid(alpha=0.3)
    for axes in list(grid.flat)[len(pairs):]:
        axes.set_visible(False)
    handles = [plt.Line2D([], [], color=colors[p], label=p) for p in policies]
    figure.legend(handles=handles, title="policy", loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False)
    figure.tight_layout()
    return figure


def _bleu_vs_params(frame: pandas.DataFrame):
    import matplotlib.pyplot as plt

    summary = child_bleu(frame)
    train = ok_rows(frame, "train", "child")
    if summary.empty or train.empty:
        return None
    params = train.groupby(["pair", "policy"])["trainable_params"].mean().rename("params").reset_index()
    points = summary.merge(params, on=["pair", "policy"])
    policies = ordered_policies(points["policy"])
    pairs = ordered_pairs(primary_child_tests(frame))
    colors = _colors(policies)
    markers = dict(zip(pairs, "osD^v<>pPX*h"))  # pairs beyond the twelfth fall back to circles
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for point in points.itertuples():
        axes.errorbar(point.params, point.mean, yerr=0 if point.std != point.std else point.std, capsize=3,
                      marker=markers.get(point.pair, "o"), markersize=8, linestyle="none", color=colors[point.policy])
    axes.set_xscale("log")
    axes.set_xlabel("trainable parameters (log scale)")
    axes.set_ylabel("BLEU")
    axes.set_title("BLEU against trainable parameters")
    axes.grid(alpha=0.3, which="both")
    policy_legend = axes.legend(handles=[plt.Line2D([], [], color=colors[p], marker="o", linestyle="none", label=p)
                                         for p in policies], title="policy (color)", loc="upper left",
                                bbox_to_anchor=(1.01, 1), frameon=False)
    axes.add_artist(policy_legend)
    axes.legend(handles=[plt.Line2D([], [], color="gray", marker=markers.get(p, "o"), linestyle="none", label=p)
                         for p in pairs], title="pair (marker)", loc="lower left", bbox_to_anchor=(1.01, 0),
                frameon=False)
    return figure


def _png(figure) -> bytes:
    """The figure as PNG bytes; the figure is freed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    finally:
        plt.close(figure)
    return buffer.getvalue()
