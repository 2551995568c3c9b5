"""A transfer study's tables and their sections: Table 2, significance, Table 3, zero-shot, BLI, cost."""

from __future__ import annotations

import json

import numpy
import pandas

from xattn_ray.report.costs import cost_table_of, mean_costs
from xattn_ray.report.markdown import markdown_table, table_section, untested_lines
from xattn_ray.report.paired import BOOTSTRAP, describe
from xattn_ray.report.rows import (REFERENCE_POLICY, ReferencesFor, cells_as_pairs, child_column, ok_rows,
                                   ordered_columns, ordered_pairs, ordered_policies, primary_child_tests,
                                   primary_test_sets)
from xattn_ray.report.significance import (SIGNIFICANCE_LEVEL, SIGNIFICANT, signature_line, significance,
                                           tested_in_order, tested_rows)
from xattn_ray.report.tables import Column, Number, Section, Table, number

DIFFERENT = "\u2020"  # †: after a Table 2 cell whose policy differs significantly from body in every seed


def transfer_sections(frame: pandas.DataFrame, references_for: ReferencesFor, test: str = BOOTSTRAP) -> list[Section]:
    """The report's results sections for a transfer study, in order; a section without rows is empty.

    `test` is the paired test of Table 2's marks and of the significance section.
    """
    tests = significance(frame, references_for, test)
    return [_table2_section(frame, tests, test), _significance_section(frame, tests, test),
            _forgetting_section(frame), _zeroshot_section(frame), _bli_section(frame), _cost_section(frame)]


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


def table2(frame: pandas.DataFrame, tests: pandas.DataFrame | None = None, test: str = BOOTSTRAP) -> Table:
    """The paper's Table 2: rows = policies, columns = child pairs (one per grid cell).

    A cell is `mean ± std`, with `(±difference)` from body for the transfer policies (not for
    scratch, which is no transfer), in bold when among the two best of its column, and marked
    `DIFFERENT` when `tests` (`significance`, of `test`) find the policy's BLEU significantly above
    body's in every seed tested, or below it in every one.
    """
    summary = child_bleu(frame)
    columns, policies = ordered_columns(primary_child_tests(frame)), ordered_policies(summary["policy"])
    different = _different_from_body(tests) if tests is not None else set()
    cells = {(row.policy, row.column): Number(
        row.mean, std=row.std, aside=row.vs_body if row.policy not in ("scratch", REFERENCE_POLICY) else None,
        bold=row.best, mark=DIFFERENT if (row.pair, row.policy) in different else "") for row in summary.itertuples()}
    rows = tuple((policy, *(cells.get((policy, column), "") for column in columns)) for policy in policies)
    return Table("table2", "BLEU of child models", _table2_note(frame, test, bool(different)),
                 (Column("policy"), *(Column(column, aside=f"vs {REFERENCE_POLICY}") for column in columns)), rows)


def _different_from_body(tests: pandas.DataFrame) -> set[tuple[str, str]]:
    """The (pair, policy) whose every tested seed has p < 0.05 on BLEU with the difference from body of one sign."""
    tested = tests.dropna(subset=["p_value"])
    # +1 above body and significant, -1 below and significant, 0 not significant.
    direction = numpy.sign(tested["bleu"] - tested["body_bleu"]) * (tested["p_value"] < SIGNIFICANCE_LEVEL)
    return {key for key, signs in direction.groupby([tested["pair"], tested["policy"]])
            if signs.iloc[0] != 0 and (signs == signs.iloc[0]).all()}


def _table2_note(frame: pandas.DataFrame, test: str, marks: bool) -> str:
    first = primary_test_sets(frame)
    names = sorted(set(first.values()))
    where = (f"test set `{names[0]}`" if len(names) == 1 else "each pair's first test set by name ("
             + ", ".join(f"{pair}: `{name}`" for pair, name in first.items()) + ")")
    note = (f"sacreBLEU on {where}; mean ± standard deviation over seeds; in parentheses the difference from "
            f"`{REFERENCE_POLICY}`; the two best of each pair in bold.")
    if marks:
        note += (f" {DIFFERENT}: BLEU significantly different from `{REFERENCE_POLICY}`'s in every seed, in the same "
                 f"direction: p < {SIGNIFICANCE_LEVEL} in the {describe(test)} of the translations.")
    return note


def parent_bleu(frame: pandas.DataFrame) -> pandas.DataFrame:
    """Each parent's own BLEU on the test sets its children's Table 2 uses: parent_pair, test_set, mean, seeds."""
    children = primary_child_tests(frame)[["parent_pair", "test_set"]].drop_duplicates()
    parents = ok_rows(frame, "test", "parent").drop(columns="parent_pair").rename(columns={"pair": "parent_pair"})
    used = parents.merge(children, on=["parent_pair", "test_set"])
    return used.groupby(["parent_pair", "test_set"])["bleu"].agg(mean="mean", seeds="count").reset_index()


def _table2_section(frame: pandas.DataFrame, tests: pandas.DataFrame, test: str) -> Section:
    if primary_child_tests(frame).empty:
        tried = (frame["stage"] == "child").any()
        return Section("## Table 2: BLEU of child models\n\nNo finished child runs" + (
            ": every one failed or stopped (see Missing runs)." if tried else "."))
    after = []
    children = primary_child_tests(frame)
    if children.assign(column=child_column(children)).duplicated(["column", "policy", "seed"]).any():
        after += ["", "Several runs share a pair, grid cell, policy and seed: their BLEU is pooled."]
    parents = parent_bleu(frame)
    if not parents.empty:
        after += ["", "Parent" + ("s" if len(parents) > 1 else "") + ": " + "; ".join(
            f"{row.parent_pair} {number(row.mean)} BLEU on `{row.test_set}`"
            + (f" (mean of {row.seeds} seeds)" if row.seeds > 1 else "") for row in parents.itertuples()) + "."]
    return table_section("Table 2: BLEU of child models", table2(frame, tests, test), after)


# --- significance against body ------------------------------------------------------------------

def significance_table(tests: pandas.DataFrame, pairs: list[str], test: str = BOOTSTRAP) -> Table:
    """The tested rows of `significance` (of `test`): one row per pair, policy and seed (in the order of
    `pairs`, `ordered_policies` and seeds); BLEU and chrF each with the difference from body's, and p."""
    tested = tested_in_order(tests, {"pair": pairs,
                                     "policy": ordered_policies(tests.dropna(subset=["p_value"])["policy"])})
    columns, rows = tested_rows(tested, ("pair", "policy"), ("pair", "policy"), "body", f"vs {REFERENCE_POLICY}")
    note = (f"sacreBLEU {describe(test)} of each policy against `{REFERENCE_POLICY}` with the same seed, on the "
            "stored translations of Table 2's test sets: BLEU and chrF of the policy's run, in parentheses the "
            f"difference from `{REFERENCE_POLICY}`'s, then the p-value; `{SIGNIFICANT}` marks p < "
            f"{SIGNIFICANCE_LEVEL}.")
    return Table("significance", f"Significance against {REFERENCE_POLICY}", note, columns, rows)


def _significance_section(frame: pandas.DataFrame, tests: pandas.DataFrame, test: str) -> Section:
    if tests.empty:
        return Section("")
    table = significance_table(tests, ordered_pairs(primary_child_tests(frame)), test)
    tested = tests.dropna(subset=["p_value"])
    lines = [f"## {table.title}", "", table.note]
    if not tested.empty:
        lines += ["", markdown_table(table), "", signature_line(tested)]
    lines += untested_lines(tests, lambda run: f"{run.pair} {run.policy} s{run.seed}")
    return Section("\n".join(lines), (table,) if table.rows else ())


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


def _forgetting_section(frame: pandas.DataFrame) -> Section:
    table = forgetting_table(frame)
    if table.empty:
        return Section("")
    policies = list(table.columns.drop("parent"))
    columns = (Column("pair"), Column("parent test set"), Column("parent's own"), *map(Column, policies))
    rows = tuple((pair, test_set, *(Number(value) for value in values))
                 for (pair, test_set), values in zip(table.index, table[["parent", *policies]].to_numpy()))
    note = ("BLEU on the parent's test set after the parent's embeddings are plugged back into each child (mean "
            "over seeds); `parent's own` is the parent's BLEU on the same set.")
    return table_section("Table 3: forgetting", Table("forgetting", "Forgetting", note, columns, rows))


def _zeroshot_section(frame: pandas.DataFrame) -> Section:
    table = zeroshot_table(frame)
    if table.empty:
        return Section("")
    columns = (Column("pair"), Column("test set"), Column("policy"), Column("BLEU"), Column("seeds"),
               Column("stitched from"))
    rows = tuple((row.pair, row.test_set, row.policy, Number(row.mean, std=row.std), int(row.seeds),
                  _stitched(row.stitched_from)) for row in table.itertuples())
    note = "Models stitched from two children, scored on a pair neither trained on."
    after = []
    # The paper's yardstick: models trained from scratch on (a little of) the zero-shot pair itself.
    pairs = table.assign(pair=table["pair"].str.split(" ").str[0])  # without the grid cell
    baselines = ok_rows(frame, "test", "parent").merge(pairs[["pair", "test_set"]].drop_duplicates())
    if not baselines.empty:
        after += ["", "Trained from scratch on the same pair: " + "; ".join(
            f"{row.run_id} {number(row.bleu)} on `{row.test_set}`"
            for row in baselines.sort_values(["pair", "run_id"]).itertuples()) + "."]
    return table_section("Zero-shot translation", Table("zeroshot", "Zero-shot translation", note, columns, rows),
                         after)


def _stitched(value: str | None) -> str:
    """A `stitched_from` JSON record as `key: value` pairs (the runs that gave the body and the embeddings)."""
    if not isinstance(value, str):
        return ""
    record = json.loads(value)
    if not isinstance(record, dict):
        return value
    return ", ".join(f"{key}: {', '.join(map(str, item)) if isinstance(item, list) else item}"
                     for key, item in record.items() if item not in (None, [], ""))


def _bli_section(frame: pandas.DataFrame) -> Section:
    table = bli_table(frame)
    if table.empty:
        return Section("")
    policies = list(table.columns.drop("entries"))
    columns = (Column("pair"), Column("dictionary"), Column("method"), *map(Column, policies), Column("entries"))
    rows = tuple((*keys, *(Number(value, ".1f") for value in values), entries)
                 for keys, values, entries in zip(table.index, table[policies].to_numpy(), table["entries"]))
    note = ("Precision@1 (%) of the new language's word embeddings retrieving the parent language's translation "
            "(mean over seeds); `entries`: dictionary words scored.")
    return table_section("Bilingual lexicon induction", Table("bli", "Bilingual lexicon induction", note, columns,
                                                              rows))


# --- cost ---------------------------------------------------------------------------------------

def cost_table(frame: pandas.DataFrame) -> pandas.DataFrame:
    """What each policy costs, as means over its child runs.

    Index: policy. Columns: runs, trainable_params, share (trainable / total parameters), train_seconds,
    target_tokens_per_second, updates.
    """
    table = mean_costs(ok_rows(frame, "train", "child"), "policy")
    return table.loc[ordered_policies(table.index)]


def _cost_section(frame: pandas.DataFrame) -> Section:
    table = cost_table(frame)
    if table.empty:
        return Section("")
    return table_section("Cost", cost_table_of(table, "Child runs, mean over pairs and seeds; the share is of all "
                                                      "the model's parameters."))
