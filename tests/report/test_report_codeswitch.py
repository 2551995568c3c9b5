"""The report of a real tiny code-switching study: its numbers against the stored rows, its tests, figure and command.

One study (base, then body/bitfit x standard/xlquery 0.3/0.3 x 2 seeds, tiny preset, 3000 synthetic
sentences) runs once for the module through `xattn-ray run`, as a user would; every test reads its store.
The tiny models may translate badly: the tests check the arithmetic and the pairing, not the models.
"""

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from xattn_ray.study.codeswitch import load_study_data
from xattn_ray.study.config import load_experiment
from xattn_ray.data.codeswitch import build_test_sets
from xattn_ray.report.build import build_report
from xattn_ray.report.markdown import markdown_cells
from xattn_ray.report.codeswitch import (codeswitch_bleu, codeswitch_cost_table, codeswitch_table,
                                         codeswitch_test_set_table)
from xattn_ray.report.significance import codeswitch_significance, codeswitch_verdicts
from xattn_ray.store import ResultsStore, make_row

from support import xattn_ray

VARIANTS = ["base", "body · standard", "body · xlquery 0.3/0.3", "bitfit · standard", "bitfit · xlquery 0.3/0.3"]
TEST_SETS = ["test.mono.la", "test.mono.lb", "test.mono.lc", "test.seen.la+lb", "test.unseen.lb+lc",
             "test.unseen.lc+la"]


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_study) -> Path:
    """The folder holding cstiny.yaml and its storage `st`, after the whole study has run."""
    folder = tmp_path_factory.mktemp("report-codeswitch")
    tiny_study(folder, "codeswitch-report")
    done = xattn_ray("run", "cstiny.yaml", "--storage", "st", "--num-cpus", "2", cwd=folder, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def rows(study):
    return ResultsStore(study / "st" / "results").read("cstiny")


@pytest.fixture(scope="module")
def references(study):
    """`references_for` built from the study's own test split: independent of the rows' `references_uri`."""
    experiment = load_experiment(study / "cstiny.yaml")
    lines = load_study_data(experiment, study / "st" / "cache").tests["test"]
    sets = build_test_sets(lines, "pv", experiment.codeswitch.options())

    def references_for(row):
        _, kind, languages = row["test_set"].split(".")
        return [example.tgt for example in sets[kind][tuple(languages.split("+"))]]

    return references_for


def variant(row) -> str:
    """The variant of a stored row, written out independently of the report's labels."""
    if row["stage"] == "base":
        return "base"
    alphas = "" if row["attention"] == "standard" else f" {row['mono_alpha']}/{row['cross_alpha']}"
    return f"{row['policy']} · {row['attention']}{alphas}"


def finished_tests(rows):
    tests = rows[(rows["eval"] == "test") & (rows["status"] == "ok")].copy()
    tests["variant"] = [variant(row) for _, row in tests.iterrows()]
    tests["kind"] = [name.split(".")[1] for name in tests["test_set"]]
    return tests


def test_table_is_the_mean_and_std_over_seeds_of_each_runs_mean_per_kind(rows):
    tests = finished_tests(rows)
    assert set(tests["variant"]) == set(VARIANTS)
    summary = codeswitch_bleu(rows).set_index(["variant", "kind"])
    table = markdown_cells(codeswitch_table(rows))
    assert list(table.index) == VARIANTS  # base, then by policy (body first), standard before xlquery
    assert list(table.columns) == ["mono", "seen", "unseen", "seeds"]
    for name in VARIANTS:
        runs = tests[tests["variant"] == name]
        assert table.at[name, "seeds"] == ("1" if name == "base" else "2")
        for kind in ("mono", "seen", "unseen"):
            per_run = runs[runs["kind"] == kind].groupby("run_id")["bleu"].mean()
            if name == "base" and kind != "mono":  # the base is scored on single sentences only
                assert per_run.empty and table.at[name, kind] == ""
                continue
            assert len(per_run) == (1 if name == "base" else 2)
            cell = summary.loc[(name, kind)]
            assert cell["mean"] == pytest.approx(per_run.mean())
            assert cell["seeds"] == len(per_run)
            if name == "base":
                assert table.at[name, kind] == f"{per_run.mean():.2f}"
            else:
                assert cell["std"] == pytest.approx(per_run.std(ddof=1))
                assert table.at[name, kind] == f"{per_run.mean():.2f} ± {per_run.std(ddof=1):.2f}"


def test_test_set_table_has_a_column_per_test_set_mono_seen_unseen(rows):
    tests = finished_tests(rows)
    table = markdown_cells(codeswitch_test_set_table(rows))
    assert list(table.columns) == TEST_SETS and list(table.index) == VARIANTS
    for (name, test_set), bleu in tests.groupby(["variant", "test_set"])["bleu"]:
        text = f"{bleu.mean():.2f}" + (f" ± {bleu.std(ddof=1):.2f}" if len(bleu) > 1 else "")
        assert table.at[name, test_set] == text
    assert table.at["base", "test.unseen.lb+lc"] == ""


def test_significance_pairs_xlquery_with_standard_of_the_same_policy_and_seed(rows):
    tests = codeswitch_significance(rows)
    assert len(tests) == 2 * 2 * 3  # policies x seeds x (one seen + two unseen test sets)
    assert tests["note"].isna().all() and tests["p_value"].between(0, 1).all()
    assert set(tests["test_set"]) == set(TEST_SETS[3:])
    assert (tests["kind"] == [name.split(".")[1] for name in tests["test_set"]]).all()
    by_run = finished_tests(rows).set_index(["policy", "attention", "seed", "test_set"])["bleu"]
    for test in tests.itertuples():
        assert test.variant == f"{test.policy} · xlquery 0.3/0.3" and test.baseline == f"{test.policy} · standard"
        # The BLEU of the files read back is the BLEU each run stored.
        assert test.bleu == pytest.approx(by_run[(test.policy, "xlquery", test.seed, test.test_set)], abs=1e-6)
        assert test.baseline_bleu == pytest.approx(by_run[(test.policy, "standard", test.seed, test.test_set)],
                                                   abs=1e-6)
        assert test.delta == pytest.approx(test.bleu - test.baseline_bleu)
    assert (tests["signature"].str.contains("bs:1000") & tests["signature"].str.contains("seed:")).all()


def test_significance_reads_the_references_the_rows_name(rows, references):
    by_rows = codeswitch_significance(rows)  # references from each row's `references_uri`
    assert by_rows.drop(columns="note").equals(codeswitch_significance(rows, references).drop(columns="note"))


def test_significance_reads_the_stored_translations_of_the_paired_runs(rows, references, tmp_path):
    """Make standard bitfit seed 2's unseen translations perfect: only its tests change, and xlquery loses."""
    before = codeswitch_significance(rows).set_index(["policy", "seed", "test_set"])
    edited = rows.copy()
    for name in ("test.unseen.lb+lc", "test.unseen.lc+la"):
        row = rows.index[(rows["eval"] == "test") & (rows["policy"] == "bitfit") & (rows["attention"] == "standard")
                         & (rows["seed"] == 2) & (rows["test_set"] == name)][0]
        perfect = tmp_path / f"hypotheses.{name}.txt"
        perfect.write_text("".join(line + "\n" for line in references(rows.loc[row])))
        edited.loc[row, "hypotheses_uri"] = str(perfect)
    tests = codeswitch_significance(edited)
    after = tests.set_index(["policy", "seed", "test_set"])
    changed = [key for key in after.index if after.at[key, "baseline_bleu"] != before.at[key, "baseline_bleu"]]
    assert sorted(changed) == [("bitfit", 2, "test.unseen.lb+lc"), ("bitfit", 2, "test.unseen.lc+la")]
    for key in changed:
        assert after.at[key, "baseline_bleu"] == pytest.approx(100.0)
        assert after.at[key, "delta"] < 0 and after.at[key, "p_value"] < 0.05
    assert after.drop(index=changed).equals(before.drop(index=changed))

    # The verdict: seeds where xlquery is significantly better (worse) on every unseen test set.
    verdicts = codeswitch_verdicts(tests)
    unseen = tests[tests["kind"] == "unseen"]
    for name, runs in unseen.groupby("variant"):
        significant = runs["p_value"] < 0.05
        by_seed = {seed: (bool((group["significant"] & (group["delta"] > 0)).all()),
                          bool((group["significant"] & (group["delta"] < 0)).all()))
                   for seed, group in runs.assign(significant=significant).groupby("seed")}
        assert verdicts.at[name, "seeds"] == 2
        assert verdicts.at[name, "better"] == sum(better for better, _ in by_seed.values())
        assert verdicts.at[name, "worse"] == sum(worse for _, worse in by_seed.values())
        assert verdicts.at[name, "tests"] == 4
        assert verdicts.at[name, "tests_worse"] == int((significant & (runs["delta"] < 0)).sum())
    assert verdicts.at["bitfit · xlquery 0.3/0.3", "worse"] >= 1  # seed 2, made worse on both unseen sets


def test_cost_table_means_over_runs_of_each_variant(rows):
    table = codeswitch_cost_table(rows)
    train = rows[(rows["eval"] == "train") & (rows["status"] == "ok")].copy()
    train["variant"] = [variant(row) for _, row in train.iterrows()]
    assert list(table.index) == VARIANTS  # no Q_cross pretraining in this study: xlquery starts from the base
    for name, runs in train.groupby("variant"):
        assert table.at[name, "runs"] == (1 if name == "base" else 2)
        assert table.at[name, "trainable_params"] == pytest.approx(runs["trainable_params"].mean())
        assert table.at[name, "updates"] == (40 if name == "base" else 20)
    assert table.at["bitfit · standard", "trainable_params"] < table.at["body · standard", "trainable_params"]
    assert table.at["body · xlquery 0.3/0.3", "trainable_params"] > table.at["body · standard", "trainable_params"]


def test_report_command_writes_the_codeswitch_sections_and_a_png(study):
    done = xattn_ray("report", "--storage", "st", "--experiment", "cstiny", "--out", "rep", cwd=study)
    assert done.returncode == 0, done.stderr
    report = (study / "rep" / "report.md").read_text()
    assert report.splitlines()[0] == "# Report: cstiny"
    for heading in ("## Code-switched translation", "## BLEU by test set",
                    "## Significance: xlquery against standard attention", "## Cost", "## Figures"):
        assert heading in report
    assert "## Table 2" not in report and "## Missing runs" not in report
    assert "| variant | mono | seen | unseen | seeds |" in report
    assert "| variant | test set | seed | BLEU | BLEU p | chrF | chrF p |" in report
    assert "- `body · xlquery 0.3/0.3` against `body · standard`: significantly better in" in report
    assert "](bleu_by_kind.png)" in report
    data = (study / "rep" / "bleu_by_kind.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width > 600 and height > 300
    tables = ["codeswitch", "test_sets", "significance", "cost"]
    assert sorted(path.name for path in (study / "rep").iterdir()) == sorted(
        ["bleu_by_kind.png", "report.md", "report.tex", *(f"{name}.{ext}" for name in tables for ext in ("csv", "tex"))])


def test_report_never_imports_the_model(study, tmp_path):
    script = ("import sys; from pathlib import Path; from xattn_ray.report.build import build_report; "
              "from xattn_ray.store import ResultsStore; "
              f"build_report(ResultsStore({str(study / 'st' / 'results')!r}), 'cstiny', Path({str(tmp_path)!r})); "
              "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('xattn_ray.engine.model', "
              "'xattn_ray.engine.decode'))))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_failed_run_is_listed_not_averaged(study, rows, tmp_path):
    store = ResultsStore(tmp_path / "results")
    shutil.copytree(study / "st" / "results", tmp_path / "results")
    stored = store.table("cstiny", [("eval", "=", "train"), ("stage", "=", "codeswitch")]).to_pylist()[0]
    template = {name: value for name, value in stored.items() if name not in ("created_at", "schema_version")}
    store.write([make_row(**dict(template, run_id="cs-body-xlquery0.3-0.3-s3-broken", seed=3, attention="xlquery",
                                 mono_alpha=0.3, cross_alpha=0.3, status="failed", error="worker died"))])
    report = build_report(store, "cstiny", tmp_path / "out").read_text()
    assert "## Missing runs" in report and "cs-body-xlquery0.3-0.3-s3-broken" in report
    assert codeswitch_bleu(store.read("cstiny")).equals(codeswitch_bleu(rows))
