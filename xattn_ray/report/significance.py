"""Paired tests (paired.py) of stored translations on BLEU and chrF: which runs are tested against which
(policies against body, xlquery against standard attention), and their results as table cells.

Every test is seed by seed: a run against its baseline's run with the same seed, on the test set's
translations both stored. `test` names the paired test (`BOOTSTRAP`, the default, or `RANDOMIZATION`).
A result holds BLEU's figures (bleu, p_value, signature) and chrF's beside them (chrf, chrf_p_value,
chrf_signature).
"""

from __future__ import annotations

import pandas

from xattn_ray.report.paired import BOOTSTRAP, paired_tests, signature_tokenizer
from xattn_ray.report.rows import (REFERENCE_ATTENTION, REFERENCE_POLICY, ReferencesFor, StoredTexts,
                                   codeswitch_tests, ordered_policies, ordered_variants, primary_child_tests,
                                   references_from_uri)
from xattn_ray.report.tables import Column, Number
from xattn_ray.store import codeswitch_kind

SIGNIFICANCE_LEVEL = 0.05
SIGNIFICANT = "*"  # after a p-value below SIGNIFICANCE_LEVEL


def significance(frame: pandas.DataFrame, references_for: ReferencesFor = references_from_uri,
                 test: str = BOOTSTRAP) -> pandas.DataFrame:
    """The paired `test` of each policy against body, seed by seed, on BLEU and chrF.

    For every child pair's primary test set and every seed body has, the stored translations of each
    other policy's run with that seed are tested against body's on the references
    `references_for(body's row)` returns. Columns: pair, test_set, policy, seed, bleu (as the test
    recomputes it from the files), body_bleu (stored), p_value (BLEU's), chrf, body_chrf, chrf_p_value,
    signature (BLEU's with the test's), chrf_signature, note (why a run could not be tested; its
    p-values are then NaN).
    """
    texts = _translations(references_for)
    tests = primary_child_tests(frame)
    results = []
    for (pair, test_set, seed), runs in tests.groupby(["pair", "test_set", "seed"]):
        if REFERENCE_POLICY not in set(runs["policy"]):
            continue  # nothing to pair these runs with
        body = runs[runs["policy"] == REFERENCE_POLICY].iloc[0]
        base = dict(pair=pair, test_set=test_set, seed=seed, body_bleu=body["bleu"], body_chrf=body["chrf"])
        if runs["policy"].duplicated().any():
            # Sizes or options of the grid give one policy several runs per seed: which pairs with which is unclear.
            note = "several runs of one policy with this seed (grid sizes or options): not paired"
            results += [dict(base, **_untested(policy, note))
                        for policy in ordered_policies(runs["policy"]) if policy != REFERENCE_POLICY]
        else:
            results += [dict(base, **tested) for tested in _paired_tests(runs.set_index("policy"),
                                                                         references_for(body), REFERENCE_POLICY,
                                                                         texts, test)]
    columns = ["pair", "test_set", "system", "seed", "bleu", "body_bleu", "p_value", "chrf", "body_chrf",
               "chrf_p_value", "signature", "chrf_signature", "note"]
    return pandas.DataFrame(results, columns=columns).rename(columns={"system": "policy"})


def codeswitch_significance(frame: pandas.DataFrame, references_for: ReferencesFor = references_from_uri,
                            test: str = BOOTSTRAP) -> pandas.DataFrame:
    """The paired `test` of each xlquery run against standard attention, seed by seed, on BLEU and chrF.

    On every seen and unseen test set, the stored translations of each xlquery run (every alphas) are
    tested against those of the standard-attention run with the same policy and seed on the references
    `references_for(standard's row)` returns. Columns: variant (the xlquery run's), baseline (the
    standard run's), policy, seed, kind, test_set, bleu and baseline_bleu (as the test recomputes them
    from the files), delta (bleu minus baseline_bleu), p_value (BLEU's), the same four of chrF (chrf,
    baseline_chrf, chrf_delta, chrf_p_value), signature (BLEU's with the test's), chrf_signature, note
    (why a run could not be tested; its numbers are then NaN).
    """
    texts = _translations(references_for)
    tests = codeswitch_tests(frame)
    tests = tests[(tests["stage"] == "codeswitch") & tests["kind"].isin(("seen", "unseen"))]
    results = []
    for (policy, seed, test_set), runs in tests.groupby(["policy", "seed", "test_set"]):
        standard = runs[runs["attention"] == REFERENCE_ATTENTION]
        if standard.empty:
            continue  # nothing to pair these runs with
        baseline = standard.iloc[0]
        shared = dict(baseline=baseline["variant"], policy=policy, seed=seed, kind=codeswitch_kind(test_set),
                      test_set=test_set)
        if runs["variant"].duplicated().any():
            # Grid options give one variant several runs per seed: which pairs with which is unclear.
            note = "several runs of one variant with this seed (grid options): not paired"
            results += [dict(shared, **_untested(variant, note))
                        for variant in ordered_variants(runs) if variant != baseline["variant"]]
        else:
            results += [dict(shared, **tested) for tested in _paired_tests(runs.set_index("variant"),
                                                                           references_for(baseline),
                                                                           baseline["variant"], texts, test)]
    columns = ["system", "baseline", "policy", "seed", "kind", "test_set", "bleu", "baseline_bleu", "p_value",
               "chrf", "baseline_chrf", "chrf_p_value", "signature", "chrf_signature", "note"]
    table = pandas.DataFrame(results, columns=columns).rename(columns={"system": "variant"})
    table.insert(table.columns.get_loc("p_value"), "delta", table["bleu"] - table["baseline_bleu"])
    table.insert(table.columns.get_loc("chrf_p_value"), "chrf_delta", table["chrf"] - table["baseline_chrf"])
    return table


def codeswitch_verdicts(tests: pandas.DataFrame) -> pandas.DataFrame:
    """How often each xlquery variant differs significantly from standard attention on unseen pairs.

    From the tested unseen rows of `codeswitch_significance`. Index: variant. Columns: baseline, seeds
    (with a tested unseen set), better and worse (seeds where xlquery is significantly better, or worse,
    on every tested unseen set), tests, tests_better, tests_worse (single (seed, test set) tests).
    """
    unseen = tests[tests["kind"] == "unseen"].dropna(subset=["p_value"])
    unseen = unseen.assign(better=(unseen["p_value"] < SIGNIFICANCE_LEVEL) & (unseen["delta"] > 0),
                           worse=(unseen["p_value"] < SIGNIFICANCE_LEVEL) & (unseen["delta"] < 0))
    by_seed = unseen.groupby(["variant", "seed"])[["better", "worse"]].all().groupby("variant")
    table = unseen.groupby("variant").agg(baseline=("baseline", "first"), tests=("test_set", "count"),
                                          tests_better=("better", "sum"), tests_worse=("worse", "sum"))
    table["seeds"], table["better"], table["worse"] = by_seed.size(), by_seed["better"].sum(), by_seed["worse"].sum()
    return table[["baseline", "seeds", "better", "worse", "tests", "tests_better", "tests_worse"]]


def _translations(references_for: ReferencesFor) -> StoredTexts:
    """What reads the runs' stored translations: the store the references are read through, when
    `references_for` reads them from the rows (a `StoredTexts`); else this machine's disk."""
    return references_for if isinstance(references_for, StoredTexts) else references_from_uri


def _paired_tests(runs: pandas.DataFrame, references: list[str] | None, baseline: str,
                  texts: StoredTexts, test: str) -> list[dict]:
    """The paired `test` of each run of `runs` against the `baseline` run, on BLEU and chrF.

    `runs` is indexed by system (a policy, a code-switching variant); `texts` reads their translations.
    Each test is a dict of system, then bleu, baseline_bleu and p_value, chrf, baseline_chrf and
    chrf_p_value (scores as the test recomputes them from the files), signature, chrf_signature, note.
    """
    others = [system for system in ordered_policies(runs.index) if system != baseline]
    systems, notes = [], {}
    for system in [baseline, *others]:
        uri = runs.at[system, "hypotheses_uri"]
        if references is None:
            notes[system] = "no readable reference file (references_uri)"
        elif not isinstance(uri, str) or (hypotheses := texts.lines(uri)) is None:
            notes[system] = f"hypotheses file missing or unreadable: {uri}"
        elif len(hypotheses) != len(references):
            notes[system] = f"{len(hypotheses)} hypotheses for {len(references)} references"
        else:
            systems.append((system, hypotheses))
    if baseline in notes:  # nothing to test against
        return [_untested(system, notes.get(system, f"{baseline}: {notes[baseline]}")) for system in others]
    (_, baseline_lines), tested = systems[0], systems[1:]
    # BLEU with the tokeniser the baseline run was scored with (Chinese targets: `zh`), as the stored scores.
    tokenize = signature_tokenizer(runs.at[baseline, "bleu_signature"])
    results = (paired_tests(baseline_lines, [lines for _, lines in tested], references, test, tokenize=tokenize)
               if tested else [])
    return [dict(system=system, bleu=by_metric["BLEU"].score, baseline_bleu=by_metric["BLEU"].baseline,
                 p_value=by_metric["BLEU"].p_value, chrf=by_metric["chrF"].score,
                 baseline_chrf=by_metric["chrF"].baseline, chrf_p_value=by_metric["chrF"].p_value,
                 signature=by_metric["BLEU"].signature, chrf_signature=by_metric["chrF"].signature, note=None)
            for (system, _), by_metric in zip(tested, results)] + [_untested(system, note)
                                                                   for system, note in notes.items()]


def _untested(system: str, note: str) -> dict:
    """A test that could not be run, and why."""
    nan = float("nan")
    return dict(system=system, bleu=nan, baseline_bleu=nan, p_value=nan, chrf=nan, baseline_chrf=nan,
                chrf_p_value=nan, signature=None, chrf_signature=None, note=note)


def signature_line(tested: pandas.DataFrame) -> str:
    """The signatures of the tests run, BLEU's and chrF's."""
    return "Signatures: " + "; ".join(
        f"{metric} " + ", ".join(f"`{s}`" for s in sorted(tested[column].dropna().unique()))
        for metric, column in (("BLEU", "signature"), ("chrF", "chrf_signature")))


def tested_cells(score: float, baseline: float, p_value: float) -> tuple[Number, Number]:
    """A test's cells in a table: the score with its difference from the baseline's in parentheses, and the
    p-value, marked `SIGNIFICANT` below `SIGNIFICANCE_LEVEL`."""
    return (Number(score, aside=score - baseline),
            Number(p_value, ".3f", mark=SIGNIFICANT if p_value < SIGNIFICANCE_LEVEL else ""))


def tested_in_order(tests: pandas.DataFrame, orders: dict[str, list], last: str = "seed") -> pandas.DataFrame:
    """The tested rows (a p-value) of a significance frame, sorted by the columns of `orders`, each in its
    given order of values, then by `last`."""
    tested = tests.dropna(subset=["p_value"])
    rank = {name: {value: i for i, value in enumerate(values)} for name, values in orders.items()}
    return tested.sort_values([*orders, last],
                              key=lambda column: column.map(rank[column.name]) if column.name in rank else column)


def tested_rows(tested: pandas.DataFrame, keys: tuple[str, str], labels: tuple[str, str],
                baseline: str, against: str) -> tuple[tuple[Column, ...], tuple[tuple, ...]]:
    """A significance table's columns and rows: the two `keys` of each tested row (headed by `labels`),
    its seed, then BLEU and chrF against the `baseline` columns (`<baseline>_bleu`, `<baseline>_chrf`)
    with their p-values; `against` names the baseline in the score columns' asides."""
    columns = (Column(labels[0]), Column(labels[1]), Column("seed"), Column("BLEU", against), Column("BLEU p"),
               Column("chrF", against), Column("chrF p"))
    rows = tuple((getattr(run, keys[0]), getattr(run, keys[1]), int(run.seed),
                  *tested_cells(run.bleu, getattr(run, f"{baseline}_bleu"), run.p_value),
                  *tested_cells(run.chrf, getattr(run, f"{baseline}_chrf"), run.chrf_p_value))
                 for run in tested.itertuples())
    return columns, rows
