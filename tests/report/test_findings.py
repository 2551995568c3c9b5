"""The papers' findings, checked on stores where each claim holds and where it fails (real Parquet files).

Transfer studies (Gheini et al. 2021) and code-switching studies (Foroutan et al. 2023): the verdicts,
the figures (mean ± std over seeds), the per-seed bootstrap on translation files written here, and the
t-test across seeds, whose p-value is checked against Student's t written out for 2 degrees of freedom.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas
import pytest
from sacrebleu.metrics import BLEU

from xattn_ray.report.build import build_report
from xattn_ray.report.findings import (CODESWITCH_PAPER, HELD, NOT_ENOUGH, NOT_HELD, TRANSFER_PAPER, across_seeds,
                                       codeswitch_findings, findings_lines, findings_section, study_findings,
                                       transfer_findings)
from xattn_ray.store import ResultsStore, make_row

EXPERIMENT = "claims"
PAPER = dict(scratch=5.0, body=20.0, xattn=19.0, randxattn=14.0)  # BLEU on lb-pv, as Table 2 would have it
WOBBLE = 0.3  # with `wobble`, xattn's numbers move by ±0.3 from seed to seed: its differences vary by seed


def row(run_id: str, stage: str, evaluation: str, **fields) -> dict:
    return make_row(experiment=EXPERIMENT, run_id=run_id, stage=stage, eval=evaluation, status="ok", **fields)


def wobble(seed: int) -> float:
    """What `wobble` adds to xattn's (or xlquery's) numbers in `seed`: −0.3, +0.3, −0.3, ..."""
    return WOBBLE * (-1) ** seed


def student_p(differences: list[float], margin: float) -> float:
    """One-sided p of the mean of 3 differences above `margin`: Student's t with 2 degrees of freedom,
    whose upper tail has the closed form 1/2 − t / (2 sqrt(t² + 2))."""
    assert len(differences) == 3
    mean = sum(differences) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    t = (mean - margin) / (sd / math.sqrt(3))
    return 0.5 - t / (2 * math.sqrt(t * t + 2))


# --- transfer studies ---------------------------------------------------------------------------

def study_rows(bleu=PAPER, seeds=(1,), bli=(40.0, 10.0), forgetting=(12.0, 3.0), zeroshot=(6.0, 2.0),
               pairs=("lb-pv",), wobbles=False) -> list[dict]:
    """A transfer study's rows: `bleu` per policy (seed s adds 0.1·s), then analyses as (xattn, body) pairs,
    one row per seed; with `wobbles`, xattn's numbers move by `wobble(seed)`."""
    rows = [row("la-pv-s1", "parent", "train", pair="la-pv", seed=1, updates=10),
            row("la-pv-s1", "parent", "test", pair="la-pv", seed=1, test_set="synth", bleu=30.0)]

    def moved(policy: str, value: float, seed: int) -> float:
        return value + (wobble(seed) if wobbles and policy == "xattn" else 0.0)

    for pair in pairs:
        for policy, score in bleu.items():
            for seed in seeds:
                run = f"{pair}-{policy}-s{seed}"
                child = dict(pair=pair, parent_pair="la-pv", policy=policy, seed=seed)
                rows += [row(run, "child", "train", **child, updates=10),
                         row(run, "child", "test", **child, test_set="synth",
                             bleu=moved(policy, score + 0.1 * seed, seed))]
    for policy, p1, kept, stitched in zip(("xattn", "body"), bli, forgetting, zeroshot):
        for seed in seeds:
            if p1 is not None:
                rows.append(row(f"bli-lb-pv-{policy}-s{seed}", "analysis", "bli", pair="lb-pv", policy=policy,
                                seed=seed, dictionary="gold", bli_method="nn",
                                bli_p1=moved(policy, p1, seed) / 100, n_evaluated=200))
            if kept is not None:
                rows.append(row(f"forgetting-lb-pv-{policy}-s{seed}", "analysis", "forgetting", pair="lb-pv",
                                policy=policy, seed=seed, test_set="synth", bleu=moved(policy, kept, seed),
                                reference_bleu=30.0))
            if stitched is not None:
                rows.append(row(f"zeroshot-lb-lc-{policy}-s{seed}", "analysis", "zeroshot", pair="lb-lc",
                                policy=policy, seed=seed, test_set="synth", bleu=moved(policy, stitched, seed)))
    return rows


def stored(tmp_path: Path, rows: list[dict]):
    store = ResultsStore(tmp_path / "results")
    store.write(rows)
    return store.read(EXPERIMENT)


def findings_of(tmp_path: Path, rows: list[dict]) -> dict[int, tuple[str, str, str]]:
    return {f.number: (f.verdict, f.figures, f.tests) for f in transfer_findings(stored(tmp_path, rows))}


def test_a_study_that_shows_the_paper_holds_all_six(tmp_path):
    found = findings_of(tmp_path, study_rows(seeds=(1, 2, 3)))
    assert {number: verdict for number, (verdict, _, _) in found.items()} == dict.fromkeys(range(1, 7), HELD)
    assert found[1][1] == "lb-pv: xattn 19.20 ± 0.10 vs body 20.20 ± 0.10 (3 seeds)"  # over the seeds
    assert found[4][1] == "lb-pv nn on gold: xattn 40.0% ± 0.0% vs body 10.0% ± 0.0% (3 seeds)"  # the same in each
    assert found[5][1] == "lb-pv on synth: xattn 12.00 ± 0.00 vs body 3.00 ± 0.00 (3 seeds; parent 30.00)"
    # Every seed is 0.1 up for every policy: the differences do not vary, and a t statistic does not exist.
    assert found[1][2] == ("lb-pv: bootstrap: not run (no translations); "
                           "across 3 seeds: the same difference in each, no t-test")


@pytest.mark.parametrize("change, failing", [
    (dict(bleu={**PAPER, "xattn": 17.9}), {1}),  # 2.1 below body; randxattn still below it
    (dict(bleu={**PAPER, "randxattn": 19.5}), {2}),  # above xattn
    (dict(bleu={**PAPER, "randxattn": 4.0}), {3}),  # below scratch (still below xattn: claim 2 holds)
    (dict(bli=(15.0, 10.0)), {4}),  # 1.5x, not 2x
    (dict(bli=(0.0, 0.0)), {4}),  # nothing induced is no finding, even at "0 >= 2 x 0"
    (dict(forgetting=(3.0, 3.0)), {5}),  # keeps as much, not more
    (dict(zeroshot=(2.9, 2.0)), {6}),  # above, but by less than 1 BLEU
])
def test_each_claim_fails_on_its_own_numbers(tmp_path, change, failing):
    found = findings_of(tmp_path, study_rows(**change))
    assert {number for number, (verdict, _, _) in found.items() if verdict == NOT_HELD} == failing
    assert {number for number, (verdict, _, _) in found.items() if verdict == HELD} == set(range(1, 7)) - failing


def test_a_claim_holds_only_when_it_holds_on_every_pair(tmp_path):
    rows = study_rows(pairs=("lb-pv",)) + [
        r for r in study_rows(bleu={**PAPER, "xattn": 10.0}, pairs=("la-lc",), bli=(None, None),
                              forgetting=(None, None), zeroshot=(None, None)) if r["stage"] == "child"]
    verdict, figures, tests = findings_of(tmp_path, rows)[1]
    assert verdict == NOT_HELD and "la-lc: xattn 10.10 vs body 20.10" in figures and "lb-pv: xattn 19.10" in figures
    assert tests.count("across seeds: needs 3 seeds") == 2  # one per pair


def test_each_grid_cell_is_checked_on_its_own_runs_never_pooled(tmp_path):
    def cell(lr: float, **numbers) -> list[dict]:
        rows = [r for r in study_rows(**numbers) if r["stage"] != "parent"]
        return [{**r, "run_id": f"{r['run_id']}-lr{lr:g}", "hparams": json.dumps({"options": {"lr": lr}, "size": None})}
                for r in rows]
    parent = [r for r in study_rows() if r["stage"] == "parent"]
    found = findings_of(tmp_path, parent + cell(0.001) + cell(0.002, bleu={**PAPER, "xattn": 10.0}))
    verdict, figures, _ = found[1]
    # Pooled, xattn would average 14.6 against 20.1 and fail both; per cell it holds at 0.001 only.
    assert verdict == NOT_HELD
    assert "lb-pv lr=0.001: xattn 19.10 vs body 20.10 (1 seed)" in figures
    assert "lb-pv lr=0.002: xattn 10.10 vs body 20.10 (1 seed)" in figures
    assert found[4][1].count("lr=0.00") == 2 and found[5][0] == HELD  # analyses are split the same way


def test_the_tables_give_each_grid_cell_its_own_column_or_row_as_the_findings_do():
    from xattn_ray.report.markdown import markdown_cells
    from xattn_ray.report.transfer import bli_table, forgetting_table, table2, zeroshot_table

    def cell(lr: float, **numbers) -> list[dict]:
        return [{**r, "run_id": f"{r['run_id']}-lr{lr:g}", "hparams": json.dumps({"options": {"lr": lr}, "size": None})}
                for r in study_rows(**numbers) if r["stage"] != "parent"]
    parent = [r for r in study_rows() if r["stage"] == "parent"]
    rows = pandas.DataFrame([make_row(**r) for r in parent + cell(0.001) + cell(0.002, bleu={**PAPER, "xattn": 10.0})])
    table = markdown_cells(table2(rows))
    assert list(table.columns) == ["lb-pv lr=0.001", "lb-pv lr=0.002"]
    # Each cell against its own body; pooled, xattn would be 14.60 against body's 20.10.
    assert table.at["xattn", "lb-pv lr=0.001"] == "**19.10 (−1.00)**"
    assert table.at["xattn", "lb-pv lr=0.002"] == "10.10 (−10.00)"
    rows_of = {"lb-pv lr=0.001", "lb-pv lr=0.002"}
    assert set(forgetting_table(rows).index.get_level_values("pair")) == rows_of
    assert set(bli_table(rows).index.get_level_values("pair")) == rows_of
    assert set(zeroshot_table(rows)["pair"]) == {"lb-lc lr=0.001", "lb-lc lr=0.002"}


def test_missing_policies_and_analyses_are_not_enough_runs(tmp_path):
    rows = study_rows(bleu={"body": 20.0, "xattn": 19.0}, bli=(40.0, None), forgetting=(None, None),
                      zeroshot=(None, 2.0))
    found = findings_of(tmp_path, rows)
    assert found[1][0] == HELD
    assert {number for number, (verdict, _, _) in found.items() if verdict == NOT_ENOUGH} == {2, 3, 4, 5, 6}
    assert found[2][1:] == ("needs child runs of xattn and randxattn", "")
    assert found[3][1] == "needs child runs of scratch, xattn and randxattn"


@pytest.mark.parametrize("seeds", [(1,), (1, 2)])
def test_fewer_than_3_seeds_show_the_figures_and_say_the_test_across_seeds_needs_3(tmp_path, seeds):
    found = findings_of(tmp_path, study_rows(seeds=seeds, wobbles=True))
    for verdict, figures, tests in found.values():
        assert verdict == HELD
        assert ("±" in figures) == (len(seeds) > 1)  # a standard deviation needs 2 seeds
        assert "across seeds: needs 3 seeds" in tests and "paired t" not in tests
    if seeds == (1,):
        assert found[1][1:] == ("lb-pv: xattn 18.80 vs body 20.10 (1 seed)",
                                "lb-pv: bootstrap: not run (no translations); across seeds: needs 3 seeds")
    else:
        assert found[1][1] == "lb-pv: xattn 19.15 ± 0.49 vs body 20.15 ± 0.07 (2 seeds)"


def test_three_seeds_run_the_t_test_across_seeds(tmp_path):
    found = findings_of(tmp_path, study_rows(seeds=(1, 2, 3), wobbles=True))
    assert {verdict for verdict, _, _ in found.values()} == {HELD}
    # Claim 1: xattn − body is −1.3, −0.7, −1.3 over seeds 1-3; the null: at most −2 (not within 2 BLEU).
    p = student_p([-1.3, -0.7, -1.3], -2.0)
    assert 0.01 < p < 0.05
    assert found[1][2].endswith(f"; across 3 seeds: paired t p = {p:.3f} (H0 xattn − body ≤ −2)")
    assert found[1][1] == "lb-pv: xattn 19.10 ± 0.36 vs body 20.20 ± 0.10 (3 seeds)"
    # Claim 4: xattn's P@1 − 2 × body's, against 0; claim 6: xattn − body, against 1 BLEU.
    assert student_p([19.7, 20.3, 19.7], 0) < 0.001
    assert found[4][2] == "lb-pv nn on gold: across 3 seeds: paired t p < 0.001 (H0 xattn ≤ 2 × body)"
    assert found[6][2] == (f"lb-lc on synth: across 3 seeds: paired t p = {student_p([3.7, 4.3, 3.7], 1.0):.3f} "
                           "(H0 xattn − body ≤ 1)")
    assert found[4][1] == "lb-pv nn on gold: xattn 39.9% ± 0.3% vs body 10.0% ± 0.0% (3 seeds)"


def test_the_t_test_is_one_sided_in_the_claims_direction(tmp_path):
    # randxattn above xattn on average; xattn's wobble puts it above randxattn in seed 2 only.
    found = findings_of(tmp_path, study_rows(bleu={**PAPER, "randxattn": 19.2}, seeds=(1, 2, 3), wobbles=True))
    p = student_p([-0.5, 0.1, -0.5], 0.0)  # xattn − randxattn, seeds 1-3: the claim's side is above 0
    assert found[2][0] == NOT_HELD and p > 0.5
    assert f"paired t p = {p:.3f} (H0 xattn ≤ randxattn)" in found[2][2]
    assert across_seeds(pandas.Series([-0.5, 0.1, -0.5]), 0.0) == pytest.approx(p)


def test_across_seeds_needs_3_seeds_and_a_spread():
    assert across_seeds(pandas.Series([1.0, 2.0]), 0.0) is None
    assert across_seeds(pandas.Series([1.0, 1.0, 1.0 + 1e-12]), 0.0) is None  # equal up to rounding
    assert across_seeds(pandas.Series([1.0, 2.0, 1.5]), 0.0) == pytest.approx(student_p([1.0, 2.0, 1.5], 0.0))


# --- the per-seed bootstrap, on translation files ------------------------------------------------

REFERENCES = [f"sentence {i} of the test set has some words" for i in range(40)]


def with_translations(rows: list[dict], folder: Path, share_right: dict[str, float], stages=("child",)) -> list[dict]:
    """`rows` whose test rows of `stages` name a reference file and a hypotheses file per run, the first
    `share_right[name]` of its lines right and the rest wrong (`name`: the policy, or `policy/attention`),
    and store that file's BLEU, as a run does."""
    references = folder / "references.txt"
    references.write_text("".join(line + "\n" for line in REFERENCES))
    for r in rows:
        if r["eval"] != "test" or r["stage"] not in stages:
            continue
        name = r["policy"] if r["attention"] is None else f"{r['policy']}/{r['attention']}"
        right = round(share_right[name] * len(REFERENCES))
        hypotheses = folder / f"{r['run_id']}.{r['test_set']}.txt"
        hypotheses.write_text("".join((line if i < right else "nothing alike here") + "\n"
                                      for i, line in enumerate(REFERENCES)))
        r.update(references_uri=str(references), hypotheses_uri=str(hypotheses),
                 bleu=BLEU().corpus_score(hypotheses.read_text().splitlines(), [REFERENCES]).score)
    return rows


def test_the_bootstrap_pairs_each_comparison_seed_by_seed(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    rows = with_translations(study_rows(seeds=(1, 2, 3), wobbles=True), files,
                             dict(body=1.0, xattn=0.5, randxattn=0.25, scratch=0.0))
    found = findings_of(tmp_path, rows)
    # Against body (claim 1), randxattn (2) and scratch (3): each a test of its own, not of both against body.
    assert found[1][2].startswith("lb-pv: bootstrap p < 0.05: xattn better in 0 of 3 seeds, body in 3; across 3 seeds")
    assert found[2][2].startswith("lb-pv: bootstrap p < 0.05: xattn better in 3 of 3 seeds, randxattn in 0; ")
    assert "lb-pv: bootstrap p < 0.05: randxattn better in 3 of 3 seeds, scratch in 0; " in found[3][2]
    assert found[1][1].startswith("lb-pv: xattn ") and found[1][1].endswith(" vs body 100.00 ± 0.00 (3 seeds)")


def test_translations_as_good_are_no_seed_better(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    rows = with_translations(study_rows(), files, dict(body=0.5, xattn=0.5, randxattn=0.5, scratch=0.5))
    assert findings_of(tmp_path, rows)[1][2].startswith("lb-pv: bootstrap p < 0.05: xattn better in 0 of 1 seed, "
                                                        "body in 0;")


# --- the report and the console -----------------------------------------------------------------

def test_the_report_opens_with_the_findings_and_the_console_says_the_same(tmp_path):
    store = ResultsStore(tmp_path / "results")
    store.write(study_rows(bleu={**PAPER, "xattn": 17.0}))
    report = build_report(store, EXPERIMENT, tmp_path / "report").read_text()
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Findings"
    assert "The claims of Gheini et al. (2021)" in report
    assert ("1. **not held**: xattn within 2 BLEU of body\n"
            "   - figures: lb-pv: xattn 17.10 vs body 20.10 (1 seed)\n"
            "   - tests: lb-pv: bootstrap: not run (no translations); across seeds: needs 3 seeds\n") in report
    assert "6. **held**: the stitched zero-shot model of xattn at least 1 BLEU above body's\n" in report
    lines = findings_lines(study_findings(store.read(EXPERIMENT)))
    assert lines[0].startswith("findings of Gheini et al. (2021)")
    assert lines[1] == ("  (1) xattn within 2 BLEU of body: NOT HELD | lb-pv: xattn 17.10 vs body 20.10 (1 seed) | "
                        "lb-pv: bootstrap: not run (no translations); across seeds: needs 3 seeds")
    assert lines[3] == ("  (3) xattn and randxattn both above scratch: held | "
                        "lb-pv: xattn 17.10 vs scratch 5.10 (1 seed); "
                        "lb-pv: randxattn 14.10 vs scratch 5.10 (1 seed) | "
                        "lb-pv: bootstrap: not run (no translations); across seeds: needs 3 seeds; "
                        "lb-pv: bootstrap: not run (no translations); across seeds: needs 3 seeds")
    assert len(lines) == 7


# --- code-switching studies ---------------------------------------------------------------------

# BLEU per (policy, attention) and kind, as a code-switching study at CPU scale has it: all four claims hold.
CODESWITCH = {("body", "standard"): dict(mono=35.0, seen=36.0, unseen=32.0),
              ("body", "xlquery"): dict(mono=34.5, seen=36.5, unseen=32.5),
              ("bitfit", "standard"): dict(mono=37.5, seen=22.3, unseen=19.2),
              ("bitfit", "xlquery"): dict(mono=37.6, seen=22.8, unseen=19.6)}
# Two test sets of each kind, 0.4 apart around the kind's figure: each run's mean per kind is the figure.
TEST_SETS = {"mono": ("test.mono.la", "test.mono.lb"), "seen": ("test.seen.la+lb", "test.seen.lb+la"),
             "unseen": ("test.unseen.lb+lc", "test.unseen.lc+la")}


def codeswitch_rows(bleu=CODESWITCH, seeds=(1,), wobbles=False, kinds=("mono", "seen", "unseen")) -> list[dict]:
    """A code-switching study's rows: the base, then a fine-tuning run per (policy, attention) and seed
    scored on the test sets of `kinds`; with `wobbles`, xlquery's BLEU moves by `wobble(seed)`."""
    rows = [row("base-s1", "base", "train", seed=1, attention="standard", updates=10)]
    rows += [row("base-s1", "base", "test", seed=1, attention="standard", test_set=name, bleu=36.0)
             for name in TEST_SETS["mono"]]
    for (policy, attention), scores in bleu.items():
        alphas = dict(mono_alpha=0.3, cross_alpha=0.3) if attention == "xlquery" else {}
        for seed in seeds:
            run = dict(policy=policy, attention=attention, seed=seed, **alphas)
            run_id = f"cs-{policy}-{attention}-s{seed}"
            rows.append(row(run_id, "codeswitch", "train", **run, updates=10))
            moved = wobble(seed) if wobbles and attention == "xlquery" else 0.0
            rows += [row(run_id, "codeswitch", "test", **run, test_set=name, bleu=scores[kind] + offset + moved)
                     for kind in kinds for name, offset in zip(TEST_SETS[kind], (-0.2, 0.2))]
    return rows


def codeswitch_of(tmp_path: Path, rows: list[dict]) -> dict[int, tuple[str, str, str]]:
    return {f.number: (f.verdict, f.figures, f.tests) for f in codeswitch_findings(stored(tmp_path, rows))}


def test_a_codeswitch_study_that_shows_the_paper_holds_all_four(tmp_path):
    found = codeswitch_of(tmp_path, codeswitch_rows())
    assert {number: verdict for number, (verdict, _, _) in found.items()} == dict.fromkeys(range(1, 5), HELD)
    assert found[1][1] == "body: mono 35.00 vs unseen 32.00 (1 seed); bitfit: mono 37.50 vs unseen 19.20 (1 seed)"
    assert found[3][1] == ("body: xlquery 0.3/0.3 32.50 vs standard 32.00 (1 seed); "
                           "bitfit: xlquery 0.3/0.3 19.60 vs standard 19.20 (1 seed)")
    assert found[3][2] == ("body: bootstrap: not run (no translations); across seeds: needs 3 seeds; "
                           "bitfit: bootstrap: not run (no translations); across seeds: needs 3 seeds")
    # Single sentences, and mono against unseen, have no bootstrap: the tests of xlquery are on code-switched sets.
    assert found[4][2] == "body: across seeds: needs 3 seeds; bitfit: across seeds: needs 3 seeds"
    assert found[1][2] == found[4][2]


def change(policy: str, attention: str, **scores) -> dict:
    return {**CODESWITCH, (policy, attention): {**CODESWITCH[(policy, attention)], **scores}}


@pytest.mark.parametrize("bleu, failing", [
    (change("body", "standard", unseen=35.5) | {("body", "xlquery"): dict(mono=34.5, seen=36.5, unseen=36.0)},
     {1}),  # unseen pairs above single sentences (xlquery still above standard on them)
    (change("bitfit", "xlquery", seen=21.5), {2}),  # below standard on seen pairs, for one policy of two
    (change("bitfit", "xlquery", unseen=18.6), {3}),  # below standard on unseen pairs
    (change("body", "xlquery", mono=33.9), {4}),  # 1.1 below standard on single sentences
])
def test_each_codeswitch_claim_fails_on_its_own_numbers(tmp_path, bleu, failing):
    found = codeswitch_of(tmp_path, codeswitch_rows(bleu))
    assert {number for number, (verdict, _, _) in found.items() if verdict == NOT_HELD} == failing
    assert {number for number, (verdict, _, _) in found.items() if verdict == HELD} == set(range(1, 5)) - failing


def test_codeswitch_claims_without_their_runs_are_not_enough_runs(tmp_path):
    standard_only = {key: scores for key, scores in CODESWITCH.items() if key[1] == "standard"}
    found = codeswitch_of(tmp_path / "standard", codeswitch_rows(standard_only))
    assert [found[n][0] for n in range(1, 5)] == [HELD, NOT_ENOUGH, NOT_ENOUGH, NOT_ENOUGH]
    assert found[3][1:] == ("needs xlquery and standard runs of one policy scored on unseen sets", "")

    xlquery_only = {key: scores for key, scores in CODESWITCH.items() if key[1] == "xlquery"}
    found = codeswitch_of(tmp_path / "xlquery", codeswitch_rows(xlquery_only))
    assert {verdict for verdict, _, _ in found.values()} == {NOT_ENOUGH}
    assert found[1][1] == "needs standard-attention runs scored on mono and unseen sets"

    found = codeswitch_of(tmp_path / "no-unseen", codeswitch_rows(kinds=("mono", "seen")))
    assert [found[n][0] for n in range(1, 5)] == [NOT_ENOUGH, HELD, NOT_ENOUGH, HELD]


def test_three_codeswitch_seeds_run_the_t_test_across_seeds(tmp_path):
    found = codeswitch_of(tmp_path, codeswitch_rows(seeds=(1, 2, 3), wobbles=True))
    assert {verdict for verdict, _, _ in found.values()} == {HELD}
    # Claim 3 for body: xlquery − standard on unseen pairs is 0.2, 0.8, 0.2 over seeds 1-3.
    p = student_p([0.2, 0.8, 0.2], 0.0)
    assert found[3][2].startswith(f"body: bootstrap: not run (no translations); across 3 seeds: paired t p = {p:.3f} "
                                  "(H0 xlquery 0.3/0.3 ≤ standard)")
    assert found[3][1].startswith("body: xlquery 0.3/0.3 32.40 ± 0.35 vs standard 32.00 ± 0.00 (3 seeds)")
    # Claim 4 for body: xlquery − standard on single sentences is −0.8, −0.2, −0.8; the null: at most −1.
    p = student_p([-0.8, -0.2, -0.8], -1.0)
    assert found[4][2].startswith(f"body: across 3 seeds: paired t p = {p:.3f} "
                                  "(H0 xlquery 0.3/0.3 − standard ≤ −1)")
    # Claim 1 compares kinds within each run: standard's runs do not wobble.
    assert found[1][2].startswith("body: across 3 seeds: the same difference in each, no t-test")


def test_the_codeswitch_bootstrap_tests_xlquery_against_standard_of_its_policy(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    rows = with_translations(codeswitch_rows(seeds=(1, 2, 3)), files, {"body/standard": 0.5, "body/xlquery": 1.0,
                                                                       "bitfit/standard": 0.5, "bitfit/xlquery": 0.5},
                             stages=("codeswitch",))
    found = codeswitch_of(tmp_path, rows)
    assert found[2][2].startswith("body: bootstrap p < 0.05: xlquery 0.3/0.3 better in 3 of 3 seeds, standard in 0; ")
    assert "bitfit: bootstrap p < 0.05: xlquery 0.3/0.3 better in 0 of 3 seeds, standard in 0; " in found[3][2]


def test_each_study_has_its_papers_findings_only(tmp_path):
    transfer, codeswitch = stored(tmp_path / "t", study_rows()), stored(tmp_path / "c", codeswitch_rows())
    assert codeswitch_findings(transfer) == [] and transfer_findings(codeswitch) == []
    assert {f.paper for f in study_findings(transfer)} == {TRANSFER_PAPER}
    assert {f.paper for f in study_findings(codeswitch)} == {CODESWITCH_PAPER}


def test_a_codeswitch_report_opens_with_foroutans_findings_and_the_console_says_the_same(tmp_path):
    store = ResultsStore(tmp_path / "results")
    store.write(codeswitch_rows(change("bitfit", "xlquery", seen=21.5)))
    report = build_report(store, EXPERIMENT, tmp_path / "report").read_text()
    assert [line for line in report.splitlines() if line.startswith("## ")][0] == "## Findings"
    assert "The claims of Foroutan et al. (2023)" in report and "Gheini" not in report
    assert "2. **not held**: xlquery above standard attention on seen code-switched pairs\n" in report
    assert findings_section(store.read(EXPERIMENT)) in report
    lines = findings_lines(study_findings(store.read(EXPERIMENT)))
    assert lines[0].startswith("findings of Foroutan et al. (2023)") and len(lines) == 5
    assert lines[2] == ("  (2) xlquery above standard attention on seen code-switched pairs: NOT HELD | "
                        "body: xlquery 0.3/0.3 36.50 vs standard 36.00 (1 seed); "
                        "bitfit: xlquery 0.3/0.3 21.50 vs standard 22.30 (1 seed) | "
                        "body: bootstrap: not run (no translations); across seeds: needs 3 seeds; "
                        "bitfit: bootstrap: not run (no translations); across seeds: needs 3 seeds")
