"""Paired bootstrap tests (sacreBLEU) of stored translations: policies against body, xlquery against standard."""

from __future__ import annotations

import logging

import pandas

from xattn_ray.report.rows import (REFERENCE_ATTENTION, REFERENCE_POLICY, ReferencesFor, StoredTexts,
                                   codeswitch_tests, ordered_policies, ordered_variants, primary_child_tests,
                                   references_from_uri)
from xattn_ray.store import codeswitch_kind

BOOTSTRAP_SAMPLES = 1000
SIGNIFICANCE_LEVEL = 0.05


def significance(frame: pandas.DataFrame, references_for: ReferencesFor = references_from_uri) -> pandas.DataFrame:
    """Paired bootstrap resampling (sacreBLEU) of each policy against body, seed by seed.

    For every child pair's primary test set and every seed body has, the stored translations of each
    other policy's run with that seed are tested against body's (1000 resamples, sacreBLEU's fixed
    seed) on the references `references_for(body's row)` returns. Columns: pair, test_set, policy,
    seed, bleu (as the test recomputes it from the files), body_bleu (stored), p_value, signature, note
    (why a run could not be tested; its p_value is then NaN).
    """
    texts = _translations(references_for)
    tests = primary_child_tests(frame)
    results = []
    for (pair, test_set, seed), runs in tests.groupby(["pair", "test_set", "seed"]):
        if REFERENCE_POLICY not in set(runs["policy"]):
            continue  # nothing to pair these runs with
        body = runs[runs["policy"] == REFERENCE_POLICY].iloc[0]
        base = dict(pair=pair, test_set=test_set, seed=seed, body_bleu=body["bleu"])
        if runs["policy"].duplicated().any():
            # Sizes or options of the grid give one policy several runs per seed: which pairs with which is unclear.
            note = "several runs of one policy with this seed (grid sizes or options): not paired"
            results += [dict(base, **_untested(policy, note))
                        for policy in ordered_policies(runs["policy"]) if policy != REFERENCE_POLICY]
        else:
            results += [dict(base, **test) for test in _paired_tests(runs.set_index("policy"), references_for(body),
                                                                     REFERENCE_POLICY, texts)]
    columns = ["pair", "test_set", "system", "seed", "bleu", "body_bleu", "p_value", "signature", "note"]
    return pandas.DataFrame(results, columns=columns).rename(columns={"system": "policy"})


def codeswitch_significance(frame: pandas.DataFrame,
                            references_for: ReferencesFor = references_from_uri) -> pandas.DataFrame:
    """Paired bootstrap resampling (sacreBLEU) of each xlquery run against standard attention, seed by seed.

    On every seen and unseen test set, the stored translations of each xlquery run (every alphas) are
    tested against those of the standard-attention run with the same policy and seed (1000 resamples,
    sacreBLEU's fixed seed) on the references `references_for(standard's row)` returns. Columns:
    variant (the xlquery run's), baseline (the standard run's), policy, seed, kind, test_set, bleu and
    baseline_bleu (as the test recomputes them from the files), delta (bleu minus baseline_bleu), p_value,
    signature, note (why a run could not be tested; its numbers are then NaN).
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
            results += [dict(shared, **test) for test in _paired_tests(runs.set_index("variant"),
                                                                       references_for(baseline), baseline["variant"],
                                                                       texts)]
    columns = ["system", "baseline", "policy", "seed", "kind", "test_set", "bleu", "baseline_bleu", "p_value",
               "signature", "note"]
    table = pandas.DataFrame(results, columns=columns).rename(columns={"system": "variant"})
    table.insert(table.columns.get_loc("p_value"), "delta", table["bleu"] - table["baseline_bleu"])
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
                  texts: StoredTexts) -> list[dict]:
    """One paired bootstrap test of each run of `runs` against the `baseline` run.

    `runs` is indexed by system (a policy, a code-switching variant); `texts` reads their translations.
    Each test is a dict of system, bleu and baseline_bleu (as the test recomputes them from the files),
    p_value, signature and note.
    """
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    logging.getLogger("sacrebleu").setLevel(logging.WARNING)  # it logs every step of every test at INFO
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
    tests = []
    if len(systems) > 1:
        # Every system against the baseline, systems[0], on the same resamples.
        signatures, scores = PairedTest(systems, {"BLEU": BLEU()}, [references], test_type="bs",
                                        n_samples=BOOTSTRAP_SAMPLES)()
        baseline_bleu = scores["BLEU"][0].score
        # An exact tie is no evidence of a difference. sacreBLEU would say p = 1/(n+1) when every
        # resample ties as well (identical translations), so a tie is given p = 1 instead.
        tests += [dict(system=system, bleu=result.score, baseline_bleu=baseline_bleu,
                       p_value=1.0 if result.score == baseline_bleu else result.p_value,
                       signature=str(signatures["BLEU"]), note=None)
                  for (system, _), result in zip(systems[1:], scores["BLEU"][1:])]
    return tests + [_untested(system, note) for system, note in notes.items()]


def _untested(system: str, note: str) -> dict:
    """A test that could not be run, and why."""
    return dict(system=system, bleu=float("nan"), baseline_bleu=float("nan"), p_value=float("nan"), signature=None,
                note=note)
