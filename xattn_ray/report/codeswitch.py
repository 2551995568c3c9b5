"""A code-switching study's tables and their sections: BLEU by kind and test set, xlquery tests, cost."""

from __future__ import annotations

import pandas

from xattn_ray.report.costs import cost_table_of, mean_costs
from xattn_ray.report.markdown import markdown_table, table_section, untested_lines
from xattn_ray.report.paired import BOOTSTRAP, describe
from xattn_ray.report.rows import (CODESWITCH_KINDS, REFERENCE_ATTENTION, ReferencesFor, codeswitch_tests, ok_rows,
                                   ordered_test_sets, ordered_variants, with_variants)
from xattn_ray.report.significance import (SIGNIFICANCE_LEVEL, SIGNIFICANT, codeswitch_significance,
                                           codeswitch_verdicts, signature_line, tested_in_order, tested_rows)
from xattn_ray.report.tables import Column, Number, Section, Table


def codeswitch_sections(frame: pandas.DataFrame, references_for: ReferencesFor,
                        test: str = BOOTSTRAP) -> list[Section]:
    """The report's results sections for a code-switching study, in order; a section without rows is empty.

    `test` is the paired test of the significance section.
    """
    return [_codeswitch_section(frame), _test_sets_section(frame), _significance_section(frame, references_for, test),
            _cost_section(frame)]


# --- BLEU by kind of test set and by test set ----------------------------------------------------

def codeswitch_run_bleu(frame: pandas.DataFrame) -> pandas.DataFrame:
    """Each run's mean BLEU over its test sets of each kind: variant, run_id, seed, kind, bleu, test_sets."""
    return (codeswitch_tests(frame).groupby(["variant", "run_id", "seed", "kind"])["bleu"]
            .agg(bleu="mean", test_sets="count").reset_index())


def codeswitch_bleu(frame: pandas.DataFrame) -> pandas.DataFrame:
    """BLEU of every (variant, kind), over seeds of the runs' means per kind (`codeswitch_run_bleu`).

    Columns: variant, kind, mean, std (NaN for one seed), seeds.
    """
    return (codeswitch_run_bleu(frame).groupby(["variant", "kind"])["bleu"]
            .agg(mean="mean", std="std", seeds="count").reset_index())


def codeswitch_table(frame: pandas.DataFrame) -> Table:
    """Code-switched translation: rows = variants; columns = mono, seen, unseen (`mean ± std` of
    `codeswitch_bleu`) and seeds."""
    summary = codeswitch_bleu(frame)
    kinds = [kind for kind in CODESWITCH_KINDS if kind in set(summary["kind"])]
    variants = ordered_variants(codeswitch_tests(frame))
    cells = {(row.variant, row.kind): Number(row.mean, std=row.std) for row in summary.itertuples()}
    seeds = codeswitch_run_bleu(frame).groupby("variant")["seed"].nunique()
    rows = tuple((variant, *(cells.get((variant, kind), "") for kind in kinds), int(seeds[variant]))
                 for variant in variants)
    note = ("sacreBLEU; for each run the mean over its test sets of each kind: single sentences of one source "
            "language (mono), code-switched pairs mixed in training (seen), pairs never mixed in training (unseen); "
            "then mean ± standard deviation over seeds. `base` is the model every run starts from, scored on single "
            "sentences only.")
    return Table("codeswitch", "Code-switched translation", note,
                 (Column("variant"), *map(Column, kinds), Column("seeds")), rows)


def codeswitch_test_set_table(frame: pandas.DataFrame) -> Table:
    """BLEU on each test set (`mean ± std` over seeds): rows = variants, columns = test sets."""
    tests = codeswitch_tests(frame)
    summary = tests.groupby(["variant", "test_set"])["bleu"].agg(mean="mean", std="std", seeds="count")
    names = ordered_test_sets(tests)
    cells = {row.Index: Number(row.mean, std=row.std) for row in summary.itertuples()}
    rows = tuple((variant, *(cells.get((variant, name), "") for name in names)) for variant in ordered_variants(tests))
    note = ("sacreBLEU on each test set (`<test set>.<kind>.<languages>`), mean ± standard deviation over "
            "seeds.")
    return Table("test_sets", "BLEU by test set", note, (Column("variant"), *map(Column, names)), rows)


def _codeswitch_section(frame: pandas.DataFrame) -> Section:
    title = "Code-switched translation"
    runs = codeswitch_run_bleu(frame)
    if runs.empty:
        return Section(f"## {title}\n\nNo finished runs.")
    if not (codeswitch_tests(frame)["stage"] == "codeswitch").any():
        title += ("\n\nNo fine-tuning run finished: every one failed or stopped (see Missing runs); "
                  "only the runs they start from are shown.")
    after = []
    if runs.drop_duplicates(["variant", "run_id"]).duplicated(["variant", "seed"]).any():
        after += ["", "Several runs share a variant and seed (grid options): their BLEU is pooled."]
    return table_section(title, codeswitch_table(frame), after)


def _test_sets_section(frame: pandas.DataFrame) -> Section:
    if codeswitch_tests(frame).empty:
        return Section("")
    return table_section("BLEU by test set", codeswitch_test_set_table(frame))


# --- xlquery against standard attention ----------------------------------------------------------

def codeswitch_significance_table(tests: pandas.DataFrame, variants: list[str], test: str = BOOTSTRAP) -> Table:
    """The tested rows of `codeswitch_significance` (of `test`): one row per xlquery variant, test set and seed
    (in the order of `variants`, `ordered_test_sets` and seeds); BLEU and chrF each with the difference from
    standard attention's, and p."""
    tested = tested_in_order(tests, {"variant": variants,
                                     "test_set": ordered_test_sets(tests.dropna(subset=["p_value"]))})
    columns, rows = tested_rows(tested, ("variant", "test_set"), ("variant", "test set"), "baseline",
                                f"vs {REFERENCE_ATTENTION}")
    note = (f"sacreBLEU {describe(test)} of each xlquery run against the {REFERENCE_ATTENTION}-attention run with the "
            "same policy and seed, on the stored translations of every seen and unseen test set: BLEU and chrF of the "
            f"xlquery run, in parentheses the difference from {REFERENCE_ATTENTION} attention's, then the p-value; "
            f"`{SIGNIFICANT}` marks p < {SIGNIFICANCE_LEVEL}.")
    return Table("significance", f"Significance: xlquery against {REFERENCE_ATTENTION} attention", note, columns, rows)


def _significance_section(frame: pandas.DataFrame, references_for: ReferencesFor, test: str) -> Section:
    tests = codeswitch_significance(frame, references_for, test)
    if tests.empty:
        return Section("")
    variants = ordered_variants(codeswitch_tests(frame))
    table = codeswitch_significance_table(tests, variants, test)
    lines = [f"## {table.title}", "", table.note]
    tested = tests.dropna(subset=["p_value"])
    if not tested.empty:
        lines += ["", markdown_table(table), ""]
        verdicts = codeswitch_verdicts(tests)
        if not verdicts.empty:
            lines += [f"On unseen pairs, BLEU (a seed counts when p < {SIGNIFICANCE_LEVEL} on every unseen test set, "
                      "in the same direction):"]
            lines += [_verdict(variant, verdicts.loc[variant]) for variant in variants if variant in verdicts.index]
            lines.append("")
        lines += [signature_line(tested)]
    lines += untested_lines(tests, lambda run: f"{run.variant} s{run.seed} on {run.test_set}")
    return Section("\n".join(lines), (table,) if table.rows else ())


def _verdict(variant: str, counts: pandas.Series) -> str:
    """One line of `codeswitch_verdicts`: how often `variant` beat, or lost to, its baseline on unseen pairs."""
    return (f"- `{variant}` against `{counts['baseline']}`: significantly better in {counts['better']} of "
            f"{counts['seeds']} seed{'s' if counts['seeds'] != 1 else ''}, worse in {counts['worse']}; single tests: "
            f"{counts['tests_better']} better, {counts['tests_worse']} worse of {counts['tests']}")


# --- cost ---------------------------------------------------------------------------------------

def codeswitch_cost_table(frame: pandas.DataFrame) -> pandas.DataFrame:
    """What each variant costs, as means over its runs (the base and pretraining included): index variant,
    columns as `mean_costs`'s."""
    rows = with_variants(ok_rows(frame, "train"))
    return mean_costs(rows, "variant").loc[ordered_variants(rows)]


def _cost_section(frame: pandas.DataFrame) -> Section:
    table = codeswitch_cost_table(frame)
    if table.empty:
        return Section("")
    return table_section("Cost", cost_table_of(table, "Mean over seeds; the share is of all the model's parameters. "
                                                      "The base and each alphas' Q_cross pretraining run once and "
                                                      "are shared by the runs that start from them."))
