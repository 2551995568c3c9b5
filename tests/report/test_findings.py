"""The paper's findings, checked on stores where each claim holds and where it fails (real Parquet files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xattn_ray.report.build import build_report
from xattn_ray.report.findings import HELD, NOT_ENOUGH, NOT_HELD, findings_lines, transfer_findings
from xattn_ray.store import ResultsStore, make_row

EXPERIMENT = "claims"
PAPER = dict(scratch=5.0, body=20.0, xattn=19.0, randxattn=14.0)  # BLEU on lb-pv, as Table 2 would have it


def row(run_id: str, stage: str, evaluation: str, **fields) -> dict:
    return make_row(experiment=EXPERIMENT, run_id=run_id, stage=stage, eval=evaluation, status="ok", **fields)


def study_rows(bleu=PAPER, seeds=(1,), bli=(40.0, 10.0), forgetting=(12.0, 3.0), zeroshot=(6.0, 2.0),
               pairs=("lb-pv",)) -> list[dict]:
    """A transfer study's rows: `bleu` per policy (seed s adds 0.1·s), then analyses as (xattn, body) pairs."""
    rows = [row("la-pv-s1", "parent", "train", pair="la-pv", seed=1, updates=10),
            row("la-pv-s1", "parent", "test", pair="la-pv", seed=1, test_set="synth", bleu=30.0)]
    for pair in pairs:
        for policy, score in bleu.items():
            for seed in seeds:
                run = f"{pair}-{policy}-s{seed}"
                child = dict(pair=pair, parent_pair="la-pv", policy=policy, seed=seed)
                rows += [row(run, "child", "train", **child, updates=10),
                         row(run, "child", "test", **child, test_set="synth", bleu=score + 0.1 * seed)]
    for policy, p1, kept, stitched in zip(("xattn", "body"), bli, forgetting, zeroshot):
        if p1 is not None:
            rows.append(row(f"bli-lb-pv-{policy}", "analysis", "bli", pair="lb-pv", policy=policy, seed=1,
                            dictionary="gold", bli_method="nn", bli_p1=p1 / 100, n_evaluated=200))
        if kept is not None:
            rows.append(row(f"forgetting-lb-pv-{policy}", "analysis", "forgetting", pair="lb-pv", policy=policy,
                            seed=1, test_set="synth", bleu=kept, reference_bleu=30.0))
        if stitched is not None:
            rows.append(row(f"zeroshot-lb-lc-{policy}", "analysis", "zeroshot", pair="lb-lc", policy=policy,
                            seed=1, test_set="synth", bleu=stitched))
    return rows


def findings_of(tmp_path: Path, rows: list[dict]) -> dict[int, tuple[str, str]]:
    store = ResultsStore(tmp_path / "results")
    store.write(rows)
    return {f.number: (f.verdict, f.figures) for f in transfer_findings(store.read(EXPERIMENT))}


def test_a_study_that_shows_the_paper_holds_all_six(tmp_path):
    found = findings_of(tmp_path, study_rows(seeds=(1, 2, 3)))
    assert {number: verdict for number, (verdict, _) in found.items()} == dict.fromkeys(range(1, 7), HELD)
    assert found[1][1] == "lb-pv: xattn 19.20 vs body 20.20 (3 seeds)"  # means over the seeds
    assert found[4][1] == "lb-pv nn: xattn 40.0% vs body 10.0%"
    assert found[5][1] == "lb-pv on synth: xattn 12.00 vs body 3.00 (parent 30.00)"


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
    assert {number for number, (verdict, _) in found.items() if verdict == NOT_HELD} == failing
    assert {number for number, (verdict, _) in found.items() if verdict == HELD} == set(range(1, 7)) - failing


def test_a_claim_holds_only_when_it_holds_on_every_pair(tmp_path):
    rows = study_rows(pairs=("lb-pv",)) + [
        r for r in study_rows(bleu={**PAPER, "xattn": 10.0}, pairs=("la-lc",), bli=(None, None),
                              forgetting=(None, None), zeroshot=(None, None)) if r["stage"] == "child"]
    verdict, figures = findings_of(tmp_path, rows)[1]
    assert verdict == NOT_HELD and "la-lc: xattn 10.10 vs body 20.10" in figures and "lb-pv: xattn 19.10" in figures


def test_missing_policies_and_analyses_are_not_enough_runs(tmp_path):
    rows = study_rows(bleu={"body": 20.0, "xattn": 19.0}, bli=(40.0, None), forgetting=(None, None),
                      zeroshot=(None, 2.0))
    found = findings_of(tmp_path, rows)
    assert found[1][0] == HELD
    assert {number for number, (verdict, _) in found.items() if verdict == NOT_ENOUGH} == {2, 3, 4, 5, 6}
    assert found[2][1] == "needs child runs of both randxattn and xattn"


def test_the_report_opens_with_the_findings_and_the_console_says_the_same(tmp_path):
    store = ResultsStore(tmp_path / "results")
    store.write(study_rows(bleu={**PAPER, "xattn": 17.0}))
    report = build_report(store, EXPERIMENT, tmp_path / "report").read_text()
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Findings"
    assert "1. **not held**: xattn within 2 BLEU of body (lb-pv: xattn 17.10 vs body 20.10 (1 seed))" in report
    assert "6. **held**: the stitched zero-shot model of xattn at least 1 BLEU above body's" in report
    lines = findings_lines(transfer_findings(store.read(EXPERIMENT)))
    assert lines[0].startswith("findings of Gheini et al. (2021)")
    assert lines[1] == "  (1) xattn within 2 BLEU of body: NOT HELD (lb-pv: xattn 17.10 vs body 20.10 (1 seed))"
    assert len(lines) == 7
