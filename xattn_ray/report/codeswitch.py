"""A code-switching study's tables and their Markdown sections: BLEU by kind and test set, xlquery tests, cost."""

from __future__ import annotations

import pandas

from xattn_ray.report.costs import cost_cells, mean_costs
from xattn_ray.report.markdown import markdown_table, mean_std, signed, untested_lines
from xattn_ray.report.rows import (CODESWITCH_KINDS, REFERENCE_ATTENTION, ReferencesFor, codeswitch_tests, ok_rows,
                                   ordered_test_sets, ordered_variants, with_variants)
from xattn_ray.report.significance import (BOOTSTRAP_SAMPLES, SIGNIFICANCE_LEVEL, codeswitch_significance,
                                           codeswitch_verdicts)


def codeswitch_sections(frame: pandas.DataFrame, references_for: ReferencesFor) -> list[str]:
    """The report's results sections for a code-switching study, in order; a section without rows is ""."""
    return [_codeswitch_section(frame), _test_sets_section(frame), _significance_section(frame, references_for),
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


def codeswitch_table(frame: pandas.DataFrame) -> pandas.DataFrame:
    """Code-switched translation as text cells: rows = variants; columns = mono, seen, unseen (`mean ± std`
    of `codeswitch_bleu`) and seeds."""
    summary = codeswitch_bleu(frame)
    kinds = [kind for kind in CODESWITCH_KINDS if kind in set(summary["kind"])]
    variants = ordered_variants(codeswitch_tests(frame))
    cells = {(row.variant, row.kind): mean_std(row.mean, row.std, row.seeds) for row in summary.itertuples()}
    table = pandas.DataFrame([[cells.get((variant, kind), "") for kind in kinds] for variant in variants],
                             index=variants, columns=kinds)
    table["seeds"] = codeswitch_run_bleu(frame).groupby("variant")["seed"].nunique()
    table.index.name = "variant"
    return table


def codeswitch_test_set_table(frame: pandas.DataFrame) -> pandas.DataFrame:
    """BLEU on each test set as text cells (`mean ± std` over seeds): rows = variants, columns = test sets."""
    tests = codeswitch_tests(frame)
    summary = tests.groupby(["variant", "test_set"])["bleu"].agg(mean="mean", std="std", seeds="count")
    names = ordered_test_sets(tests)
    cells = {row.Index: mean_std(row.mean, row.std, row.seeds) for row in summary.itertuples()}
    variants = ordered_variants(tests)
    table = pandas.DataFrame([[cells.get((variant, name), "") for name in names] for variant in variants],
                             index=variants, columns=names)
    table.index.name = "variant"
    return table


def _codeswitch_section(frame: pandas.DataFrame) -> str:
    title = "## Code-switched translation"
    runs = codeswitch_run_bleu(frame)
    if runs.empty:
        return f"{title}\n\nNo finished runs."
    if not (codeswitch_tests(frame)["stage"] == "codeswitch").any():
        title += ("\n\nNo fine-tuning run finished: every one failed or stopped (see Missing runs); "
                  "only the runs they start from are shown.")
    lines = [title, "", "sacreBLEU; for each run the mean over its test sets of each kind: single sentences of one "
             "source language (mono), code-switched pairs mixed in training (seen), pairs never mixed in training "
             "(unseen); then mean ± standard deviation over seeds. `base` is the model every run starts from, "
             "scored on single sentences only.", "", markdown_table(codeswitch_table(frame))]
    if runs.drop_duplicates(["variant", "run_id"]).duplicated(["variant", "seed"]).any():
        lines += ["", "Several runs share a variant and seed (grid options): their BLEU is pooled."]
    return "\n".join(lines)


def _test_sets_section(frame: pandas.DataFrame) -> str:
    if codeswitch_tests(frame).empty:
        return ""
    return "\n".join(["## BLEU by test set", "", "sacreBLEU on each test set (`<test set>.<kind>.<languages>`), "
                      "mean ± standard deviation over seeds.", "", markdown_table(codeswitch_test_set_table(frame))])


# --- xlquery against standard attention ----------------------------------------------------------

def codeswitch_significance_table(tests: pandas.DataFrame, variants: list[str]) -> pandas.DataFrame:
    """The tested rows of `codeswitch_significance` as text cells: rows = (xlquery variant, test set) in the
    order of `variants` and `ordered_test_sets`; one column per seed, `±delta (p)`, `*` if p < 0.05."""
    tested = tests.dropna(subset=["p_value"])
    seeds = sorted(tested["seed"].unique())
    names = ordered_test_sets(tested)
    rows = []
    for variant in [variant for variant in variants if variant in set(tested["variant"])]:
        runs = tested[tested["variant"] == variant]
        for name in [name for name in names if name in set(runs["test_set"])]:
            cells = {run.seed: f"{signed(run.delta)} (p {run.p_value:.3f})"
                     + ("*" if run.p_value < SIGNIFICANCE_LEVEL else "")
                     for run in runs[runs["test_set"] == name].itertuples()}
            rows.append([variant, name, *(cells.get(seed, "") for seed in seeds)])
    return pandas.DataFrame(rows, columns=["variant", "test set", *(f"s{seed}" for seed in seeds)]).set_index("variant")


def _significance_section(frame: pandas.DataFrame, references_for: ReferencesFor) -> str:
    tests = codeswitch_significance(frame, references_for)
    if tests.empty:
        return ""
    lines = [f"## Significance: xlquery against {REFERENCE_ATTENTION} attention", "",
             f"sacreBLEU paired bootstrap resampling ({BOOTSTRAP_SAMPLES} resamples) of each xlquery run against "
             f"the {REFERENCE_ATTENTION}-attention run with the same policy and seed, on the stored translations of "
             f"every seen and unseen test set. Cells: BLEU of xlquery minus {REFERENCE_ATTENTION}, and the p-value, "
             f"per seed; `*` marks p < {SIGNIFICANCE_LEVEL}."]
    tested = tests.dropna(subset=["p_value"])
    if not tested.empty:
        variants = ordered_variants(codeswitch_tests(frame))
        lines += ["", markdown_table(codeswitch_significance_table(tests, variants)), ""]
        verdicts = codeswitch_verdicts(tests)
        if not verdicts.empty:
            lines += [f"On unseen pairs (a seed counts when p < {SIGNIFICANCE_LEVEL} on every unseen test set, "
                      "in the same direction):"]
            lines += [_verdict(variant, verdicts.loc[variant]) for variant in variants if variant in verdicts.index]
            lines.append("")
        lines += ["Signature: " + ", ".join(f"`{s}`" for s in sorted(tested["signature"].unique()))]
    lines += untested_lines(tests, lambda run: f"{run.variant} s{run.seed} on {run.test_set}")
    return "\n".join(lines)


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


def _cost_section(frame: pandas.DataFrame) -> str:
    table = codeswitch_cost_table(frame)
    if table.empty:
        return ""
    return "\n".join(["## Cost", "", "Mean over seeds; the share is of all the model's parameters. The base and "
                      "each alphas' Q_cross pretraining run once and are shared by the runs that start from them.",
                      "", markdown_table(cost_cells(table))])
