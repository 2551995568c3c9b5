"""A transfer study's tables and their Markdown sections: Table 2, significance, Table 3, zero-shot, BLI, cost."""

from __future__ import annotations

import json

import pandas

from xattn_ray.report.costs import cost_cells, mean_costs
from xattn_ray.report.markdown import markdown_table, mean_std, number, signed, untested_lines
from xattn_ray.report.rows import (REFERENCE_POLICY, ReferencesFor, cells_as_pairs, child_column, ok_rows,
                                   ordered_columns, ordered_pairs, ordered_policies, primary_child_tests,
                                   primary_test_sets)
from xattn_ray.report.significance import BOOTSTRAP_SAMPLES, SIGNIFICANCE_LEVEL, significance


def transfer_sections(frame: pandas.DataFrame, references_for: ReferencesFor) -> list[str]:
    """The report's results sections for a transfer study, in order; a section without rows is ""."""
    return [_table2_section(frame), _significance_section(frame, references_for), _forgetting_section(frame),
            _zeroshot_section(frame), _bli_section(frame), _cost_section(frame)]


# --- Table 2 ------------------------------------------------------------------------------------

def child_bleu(frame: pandas.DataFrame) -> pandas.DataFrame:
    """BLEU of every (pair, grid cell, policy) on the pair's primary test set, over seeds.

    Columns: pair, column (the pair and its grid cell: `child_column`), policy, test_set, mean, std
    (NaN for one seed), seeds, vs_body (mean minus the body's mean in the same column; NaN where there is
    no body, and for body itself), best (one of the two highest means of its column; ties at second
    place are all best).
    """
    tests = primary_child_tests(frame)
    if tests.empty:  # every child failed, or none ran: no cells (and no arithmetic on empty text columns)
        return pandas.DataFrame(columns=["pair", "column", "policy", "test_set", "mean", "std", "seeds", "vs_body",
                                         "best"])
    summary = (tests.assign(column=child_column(tests)).groupby(["pair", "column", "policy", "test_set"])["bleu"]
               .agg(mean="mean", std="std", seeds="count").reset_index())
    body = summary[summary["policy"] == REFERENCE_POLICY].set_index("column")["mean"]
    summary["vs_body"] = summary["mean"] - summary["column"].map(body)
    summary.loc[summary["policy"] == REFERENCE_POLICY, "vs_body"] = float("nan")
    second_best = summary.groupby("column")["mean"].transform(lambda means: means.nlargest(2).min())
    summary["best"] = summary["mean"] >= second_best
    return summary


def table2(frame: pandas.DataFrame) -> pandas.DataFrame:
    """The paper's Table 2 as text cells: rows = policies, columns = child pairs (one per grid cell).

    A cell is `mean ± std`, with `(±difference)` from body for the transfer policies (not for
    scratch, which is no transfer), in **bold** when among the two best of its column.
    """
    summary = child_bleu(frame)
    columns, policies = ordered_columns(primary_child_tests(frame)), ordered_policies(summary["policy"])
    cells = {}
    for row in summary.itertuples():
        text = mean_std(row.mean, row.std, row.seeds)
        if row.policy not in ("scratch", REFERENCE_POLICY) and row.vs_body == row.vs_body:
            text += f" ({signed(row.vs_body)})"
        cells[(row.policy, row.column)] = f"**{text}**" if row.best else text
    table = pandas.DataFrame([[cells.get((policy, column), "") for column in columns] for policy in policies],
                             index=policies, columns=columns)
    table.index.name = "policy"
    return table


def parent_bleu(frame: pandas.DataFrame) -> pandas.DataFrame:
    """Each parent's own BLEU on the test sets its children's Table 2 uses: parent_pair, test_set, mean, seeds."""
    children = primary_child_tests(frame)[["parent_pair", "test_set"]].drop_duplicates()
    parents = ok_rows(frame, "test", "parent").drop(columns="parent_pair").rename(columns={"pair": "parent_pair"})
    used = parents.merge(children, on=["parent_pair", "test_set"])
    return used.groupby(["parent_pair", "test_set"])["bleu"].agg(mean="mean", seeds="count").reset_index()


def _table2_section(frame: pandas.DataFrame) -> str:
    if primary_child_tests(frame).empty:
        tried = (frame["stage"] == "child").any()
        return "## Table 2: BLEU of child models\n\nNo finished child runs" + (
            ": every one failed or stopped (see Missing runs)." if tried else ".")
    first = primary_test_sets(frame)
    names = sorted(set(first.values()))
    where = (f"test set `{names[0]}`" if len(names) == 1 else "each pair's first test set by name ("
             + ", ".join(f"{pair}: `{name}`" for pair, name in first.items()) + ")")
    lines = ["## Table 2: BLEU of child models", "",
             f"sacreBLEU on {where}; mean ± standard deviation over seeds; in parentheses the difference "
             f"from `{REFERENCE_POLICY}`; the two best of each pair in bold.", "", markdown_table(table2(frame))]
    tests = primary_child_tests(frame)
    if tests.assign(column=child_column(tests)).duplicated(["column", "policy", "seed"]).any():
        lines += ["", "Several runs share a pair, grid cell, policy and seed: their BLEU is pooled."]
    parents = parent_bleu(frame)
    if not parents.empty:
        lines += ["", "Parent" + ("s" if len(parents) > 1 else "") + ": " + "; ".join(
            f"{row.parent_pair} {number(row.mean)} BLEU on `{row.test_set}`"
            + (f" (mean of {row.seeds} seeds)" if row.seeds > 1 else "") for row in parents.itertuples()) + "."]
    return "\n".join(lines)


# --- significance against body ------------------------------------------------------------------

def significance_table(tests: pandas.DataFrame, pairs: list[str]) -> pandas.DataFrame:
    """p-values as text cells: rows = child pairs, columns = policies; one `s<seed> p` per seed, `*` if p < 0.05."""
    tested = tests.dropna(subset=["p_value"])
    policies = ordered_policies(tested["policy"])
    table = pandas.DataFrame("", index=[p for p in pairs if p in set(tested["pair"])], columns=policies)
    for (pair, policy), runs in tested.groupby(["pair", "policy"]):
        table.at[pair, policy] = ", ".join(
            f"s{run.seed}: {run.p_value:.3f}" + ("*" if run.p_value < SIGNIFICANCE_LEVEL else "")
            for run in runs.sort_values("seed").itertuples())
    table.index.name = "pair"
    return table


def _significance_section(frame: pandas.DataFrame, references_for: ReferencesFor) -> str:
    pairs = ordered_pairs(primary_child_tests(frame))
    tests = significance(frame, references_for)
    if tests.empty:
        return ""
    lines = ["## Significance against body", "",
             f"sacreBLEU paired bootstrap resampling ({BOOTSTRAP_SAMPLES} resamples) of each policy against "
             f"`{REFERENCE_POLICY}` with the same seed, on the stored translations of Table 2's test sets. "
             f"Cells: p-value per seed; `*` marks p < {SIGNIFICANCE_LEVEL}."]
    tested = tests.dropna(subset=["p_value"])
    if not tested.empty:
        signatures = sorted(tested["signature"].unique())
        lines += ["", markdown_table(significance_table(tests, pairs)), "",
                  "Signature: " + ", ".join(f"`{s}`" for s in signatures)]
    lines += untested_lines(tests, lambda run: f"{run.pair} {run.policy} s{run.seed}")
    return "\n".join(lines)


# --- forgetting, zero-shot, lexicon induction ----------------------------------------------------

def forgetting_table(frame: pandas.DataFrame) -> pandas.DataFrame:
    """Table 3: the parent's test BLEU after its embeddings are plugged back into each child.

    Rows = (child pair, parent test set); columns: `parent` (the parent's own BLEU on that set,
    `reference_bleu`), then one column per policy (mean over seeds). Empty without forgetting rows.
    """
    rows = cells_as_pairs(ok_rows(frame, "forgetting"))
    if rows.empty:
        return pandas.DataFrame()
    keys = ["pair", "test_set"]
    by_policy = rows.pivot_table(index=keys, columns="policy", values="bleu", aggfunc="mean")
    table = rows.groupby(keys)["reference_bleu"].mean().rename("parent").to_frame().join(by_policy)
    order = {pair: i for i, pair in enumerate(ordered_pairs(rows))}
    table = table.sort_index(key=lambda level: level.map(order) if level.name == "pair" else level)
    return table[["parent", *ordered_policies(by_policy.columns)]]


def zeroshot_table(frame: pandas.DataFrame) -> pandas.DataFrame:
    """BLEU of stitched models on pairs no model trained on: pair, test_set, policy, mean, std, seeds, stitched_from."""
    rows = cells_as_pairs(ok_rows(frame, "zeroshot"))
    if rows.empty:
        return pandas.DataFrame()
    keys = ["pair", "test_set", "policy"]
    table = rows.groupby(keys, dropna=False)["bleu"].agg(mean="mean", std="std", seeds="count")
    # What a stitched model is made of, told once per cell: the lowest seed's record.
    table["stitched_from"] = rows.sort_values("seed").groupby(keys, dropna=False)["stitched_from"].first()
    rank = {policy: i for i, policy in enumerate(ordered_policies(rows["policy"]))}
    return table.reset_index().sort_values(["pair", "test_set", "policy"], key=lambda column: column.map(rank)
                                           if column.name == "policy" else column, ignore_index=True)


def bli_table(frame: pandas.DataFrame) -> pandas.DataFrame:
    """Lexicon-induction precision@1 (%): rows = (pair, dictionary, method), columns = policies, plus `entries`."""
    rows = cells_as_pairs(ok_rows(frame, "bli"))
    if rows.empty:
        return pandas.DataFrame()
    keys = ["pair", "dictionary", "bli_method"]
    table = rows.pivot_table(index=keys, columns="policy", values="bli_p1", aggfunc="mean") * 100
    table = table[ordered_policies(table.columns)]
    # How many dictionary words were scorable; one figure unless policies saw different vocabularies.
    table["entries"] = rows.groupby(keys)["n_evaluated"].agg(
        lambda n: "/".join(str(int(value)) for value in sorted(set(n.dropna()))))
    return table


def _forgetting_section(frame: pandas.DataFrame) -> str:
    table = forgetting_table(frame)
    if table.empty:
        return ""
    text = table.map(number).reset_index().set_index("pair")
    text = text.rename(columns={"test_set": "parent test set", "parent": "parent's own"})
    return "\n".join(["## Table 3: forgetting", "",
                      "BLEU on the parent's test set after the parent's embeddings are plugged back into each "
                      "child (mean over seeds); `parent's own` is the parent's BLEU on the same set.", "",
                      markdown_table(text)])


def _zeroshot_section(frame: pandas.DataFrame) -> str:
    table = zeroshot_table(frame)
    if table.empty:
        return ""
    table["BLEU"] = [mean_std(row.mean, row.std, row.seeds) for row in table.itertuples()]
    table["stitched from"] = table["stitched_from"].map(_stitched)
    text = table.rename(columns={"test_set": "test set"}).set_index("pair")[
        ["test set", "policy", "BLEU", "seeds", "stitched from"]]
    lines = ["## Zero-shot translation", "", "Models stitched from two children, scored on a pair neither trained on.",
             "", markdown_table(text)]
    # The paper's yardstick: models trained from scratch on (a little of) the zero-shot pair itself.
    pairs = table.assign(pair=table["pair"].str.split(" ").str[0])  # without the grid cell
    baselines = ok_rows(frame, "test", "parent").merge(pairs[["pair", "test_set"]].drop_duplicates())
    if not baselines.empty:
        lines += ["", "Trained from scratch on the same pair: " + "; ".join(
            f"{row.run_id} {number(row.bleu)} on `{row.test_set}`"
            for row in baselines.sort_values(["pair", "run_id"]).itertuples()) + "."]
    return "\n".join(lines)


def _stitched(value: str | None) -> str:
    """A `stitched_from` JSON record as `key: value` pairs (the runs that gave the body and the embeddings)."""
    if not isinstance(value, str):
        return ""
    record = json.loads(value)
    if not isinstance(record, dict):
        return value
    return ", ".join(f"{key}: {', '.join(map(str, item)) if isinstance(item, list) else item}"
                     for key, item in record.items() if item not in (None, [], ""))


def _bli_section(frame: pandas.DataFrame) -> str:
    table = bli_table(frame)
    if table.empty:
        return ""
    text = table.copy()
    for column in text.columns.drop("entries"):
        text[column] = text[column].map(lambda value: number(value, 1))
    text = text.reset_index().rename(columns={"bli_method": "method"}).set_index("pair")
    return "\n".join(["## Bilingual lexicon induction", "",
                      "Precision@1 (%) of the new language's word embeddings retrieving the parent language's "
                      "translation (mean over seeds); `entries`: dictionary words scored.", "", markdown_table(text)])


# --- cost ---------------------------------------------------------------------------------------

def cost_table(frame: pandas.DataFrame) -> pandas.DataFrame:
    """What each policy costs, as means over its child runs.

    Index: policy. Columns: runs, trainable_params, share (trainable / total parameters), train_seconds,
    target_tokens_per_second, updates.
    """
    table = mean_costs(ok_rows(frame, "train", "child"), "policy")
    return table.loc[ordered_policies(table.index)]


def _cost_section(frame: pandas.DataFrame) -> str:
    table = cost_table(frame)
    if table.empty:
        return ""
    return "\n".join(["## Cost", "", "Child runs, mean over pairs and seeds; the share is of all the model's "
                      "parameters.", "", markdown_table(cost_cells(table))])
