"""The report of a real tiny study: its numbers against the stored rows, its tests, figures and command.

One study (2 children x scratch/body/xattn x 2 seeds, tiny preset, a few hundred synthetic sentences)
runs once for the module through `xattn-ray run`, as a user would; every test reads its store.
"""

import csv
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from xattn_ray.study.config import load_experiment
from xattn_ray.study.transfer import load_run_data
from xattn_ray.report.build import build_report
from xattn_ray.report.markdown import markdown_cells
from xattn_ray.report.significance import significance
from xattn_ray.report.transfer import bli_table, child_bleu, cost_table, forgetting_table, table2, zeroshot_table
from xattn_ray.store import ResultsStore, make_row

from support import xattn_ray

GRID = "grid: {policies: [scratch, body, xattn], seeds: [1, 2]}"
FIGURES = ("bleu_by_pair.png", "valid_curves.png", "bleu_vs_params.png")


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_study) -> Path:
    """The folder holding tiny.yaml and its storage `st`, after the whole study has run."""
    folder = tmp_path_factory.mktemp("report")
    tiny_study(folder, grid=GRID)
    done = xattn_ray("run", "tiny.yaml", "--storage", "st", "--num-cpus", "2", cwd=folder, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def rows(study):
    return ResultsStore(study / "st" / "results").read("tiny")


@pytest.fixture(scope="module")
def references(study):
    """`references_for` from the experiment's own test set: independent of the rows' `references_uri`."""
    experiment = load_experiment(study / "tiny.yaml")
    children = {child.run_name: child for child in experiment.children}

    def references_for(row):
        data = load_run_data(experiment, children[row["pair"]], study / "st" / "cache")
        return list(data.tests[row["test_set"]].tgt)

    return references_for


def child_tests(rows):
    return rows[(rows["eval"] == "test") & (rows["stage"] == "child") & (rows["status"] == "ok")]


def test_table2_is_the_mean_and_std_over_seeds_of_the_stored_rows(rows):
    summary = child_bleu(rows).set_index(["pair", "policy"])
    direct = child_tests(rows).groupby(["pair", "policy"])["bleu"]
    assert set(summary.index) == {(pair, policy) for pair in ("lb-pv", "la-lb")
                                  for policy in ("scratch", "body", "xattn")}
    for (pair, policy), bleu in direct:
        cell = summary.loc[(pair, policy)]
        assert cell["mean"] == pytest.approx(bleu.mean())
        assert cell["std"] == pytest.approx(bleu.std(ddof=1))
        assert cell["seeds"] == 2
        body = direct.get_group((pair, "body")).mean()
        if policy == "body":
            assert math.isnan(cell["vs_body"])
        else:
            assert cell["vs_body"] == pytest.approx(bleu.mean() - body)


def test_table2_cells_show_difference_from_body_and_bold_the_best_two(rows):
    table = markdown_cells(table2(rows))
    summary = child_bleu(rows).set_index(["pair", "policy"])
    assert list(table.index) == ["scratch", "body", "xattn"]  # the paper's order
    assert list(table.columns) == ["lb-pv", "la-lb"]  # by parent, then new source before new target
    for pair in table.columns:
        means = summary.loc[pair]["mean"]
        second = sorted(means, reverse=True)[1]
        for policy in table.index:
            cell, mean, std = table.at[policy, pair], means[policy], summary.loc[(pair, policy), "std"]
            assert cell.startswith("**") == (mean >= second), (pair, policy, cell)
            text = cell.strip("*")
            assert text.startswith(f"{mean:.2f} ± {std:.2f}")
            if policy == "xattn":
                difference = mean - means["body"]
                assert text.endswith(f" ({'+' if difference >= 0 else '−'}{abs(difference):.2f})")
            else:
                assert "(" not in text  # no difference for body itself, nor for scratch (no transfer)


def test_cost_table_means_over_child_runs(rows):
    table = cost_table(rows)
    train = rows[(rows["eval"] == "train") & (rows["stage"] == "child")]
    assert list(table.index) == ["scratch", "body", "xattn"]
    for policy, runs in train.groupby("policy"):
        assert table.at[policy, "runs"] == 4
        assert table.at[policy, "trainable_params"] == pytest.approx(runs["trainable_params"].mean())
        assert table.at[policy, "share"] == pytest.approx((runs["trainable_params"] / runs["total_params"]).mean())
        assert table.at[policy, "train_seconds"] == pytest.approx(runs["train_seconds"].mean())
        assert table.at[policy, "updates"] == 12
    assert table.at["scratch", "share"] == 1.0
    assert table.at["xattn", "trainable_params"] < table.at["body", "trainable_params"]


def test_significance_tests_the_stored_translations_seed_by_seed(rows, references, tmp_path):
    tests = significance(rows, references)
    assert len(tests) == 2 * 2 * 2  # pairs x policies other than body x seeds
    assert tests["note"].isna().all()
    assert tests["p_value"].between(0, 1).all()
    stored = child_tests(rows).set_index(["pair", "policy", "seed"])["bleu"]
    for test in tests.itertuples():  # BLEU of the files read back is the BLEU the run stored
        assert test.bleu == pytest.approx(stored[(test.pair, test.policy, test.seed)], abs=1e-6)
    assert (tests["signature"].str.contains("bs:1000") & tests["signature"].str.contains("seed:")).all()

    # The test reads the hypothesis files: make one run's file perfect, and it wins against body.
    row = rows.index[(rows["eval"] == "test") & (rows["pair"] == "lb-pv") & (rows["policy"] == "xattn")
                     & (rows["seed"] == 1)][0]
    perfect = tmp_path / "hypotheses.test.txt"
    perfect.write_text("".join(line + "\n" for line in references(rows.loc[row])))
    edited = rows.copy()
    edited.loc[row, "hypotheses_uri"] = str(perfect)
    tested = significance(edited, references).set_index(["pair", "policy", "seed"])
    assert tested.at[("lb-pv", "xattn", 1), "bleu"] == pytest.approx(100.0)
    assert tested.at[("lb-pv", "xattn", 1), "p_value"] < 0.05


def test_significance_reads_the_references_the_rows_name(rows, references):
    by_rows = significance(rows)  # references from each row's `references_uri`
    assert by_rows["note"].isna().all()
    assert by_rows.drop(columns="note").equals(significance(rows, references).drop(columns="note"))


def test_report_never_decodes_and_writes_sections_and_png_figures(study, tmp_path):
    # In a fresh process, so that nothing a test imported before hides an import of the model.
    script = ("import sys; from pathlib import Path; from xattn_ray.report.build import build_report; "
              "from xattn_ray.store import ResultsStore; "
              f"build_report(ResultsStore({str(study / 'st' / 'results')!r}), 'tiny', Path({str(tmp_path)!r})); "
              "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('xattn_ray.engine.model', "
              "'xattn_ray.engine.decode'))))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    report = (tmp_path / "report.md").read_text()
    for heading in ("# Report: tiny", "## Table 2", "## Significance", "## Cost", "## Figures"):
        assert heading in report
    assert "## Table 3" not in report and "## Zero-shot" not in report and "## Missing runs" not in report
    for name in FIGURES:
        assert f"]({name})" in report
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
        assert width > 600 and height > 300
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temporary files left


def test_tables_for_papers_hold_the_stored_rows_numbers(study, rows, tmp_path):
    build_report(ResultsStore(study / "st" / "results"), "tiny", tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir() if path.suffix in (".tex", ".csv")) == sorted(
        ["report.tex", *(f"{name}.{ext}" for name in ("table2", "significance", "cost") for ext in ("tex", "csv"))])
    with (tmp_path / "table2.csv").open() as lines:
        table = {line["policy"]: line for line in csv.DictReader(lines)}
    summary = child_bleu(rows).set_index(["pair", "policy"])
    for (pair, policy), cell in summary.iterrows():
        assert float(table[policy][pair]) == pytest.approx(cell["mean"], rel=1e-11)
        assert float(table[policy][f"{pair} std"]) == pytest.approx(cell["std"], rel=1e-11)
        assert table[policy][f"{pair} vs body"] == ("" if policy in ("scratch", "body") else f"{cell['vs_body']:.12g}")
    with (tmp_path / "significance.csv").open() as lines:
        tests = list(csv.DictReader(lines))
    assert len(tests) == 2 * 2 * 2 and all(0 < float(test["chrF p"]) <= 1 for test in tests)
    document = (tmp_path / "report.tex").read_text()
    assert document.count(r"\begin{tabular}") == 3 and (tmp_path / "table2.tex").read_text() in document


def test_missing_runs_are_listed_not_averaged_and_analysis_rows_get_tables(study, rows, tmp_path):
    store = ResultsStore(tmp_path / "results")
    shutil.copytree(study / "st" / "results", tmp_path / "results")
    tests = child_tests(rows)
    stored = store.table("tiny", [("eval", "=", "test"), ("stage", "=", "child")]).to_pylist()[0]
    template = {name: value for name, value in stored.items() if name not in ("created_at", "schema_version")}
    store.write([make_row(**dict(template, run_id="lb-pv-xattn-s3-broken", seed=3, eval="train", test_set=None,
                                 bleu=None, status="failed", error="worker died: out of memory"))])
    # Forgetting rows as the coming analysis will write them, numbers taken from the study's test rows.
    store.write([make_row(**dict(template, run_id=f"{run.run_id}-forget", stage="analysis", eval="forgetting",
                                 pair=run.pair, policy=run.policy, seed=int(run.seed), bleu=float(run.bleu) / 2,
                                 reference_bleu=10.0, status="ok")) for run in tests.itertuples()])
    lexicon = [make_row(**dict(template, run_id=f"{run.run_id}-bli", stage="analysis", eval="bli", pair=run.pair,
                               policy=run.policy, seed=int(run.seed), test_set=None, bleu=None, bli_method="csls",
                               bli_p1=0.25 * int(run.seed), n_evaluated=57, dictionary="lb-la", status="ok"))
               for run in tests.itertuples()]
    stitched = [make_row(**dict(template, run_id=f"zeroshot-{run.run_id}", stage="analysis", eval="zeroshot",
                                pair="lb-lb2", policy=run.policy, seed=int(run.seed), bleu=float(run.bleu) + 1,
                                stitched_from={"body": run.run_id, "embeddings": "lb-pv", "side": "source"},
                                status="ok"))
                for run in tests[tests["pair"] == "la-lb"].itertuples()]
    store.write(lexicon + stitched)
    report = build_report(store, "tiny", tmp_path / "out").read_text()
    assert "## Missing runs" in report and "lb-pv-xattn-s3-broken" in report and "out of memory" in report
    assert "(13 finished, 1 failed or stopped)" in report
    assert child_bleu(store.read("tiny")).equals(child_bleu(rows))  # the failed run counts nowhere
    forgetting = forgetting_table(store.read("tiny"))
    assert list(forgetting.columns) == ["parent", "scratch", "body", "xattn"]
    for (pair, policy), bleu in tests.groupby(["pair", "policy"])["bleu"]:
        assert forgetting.loc[(pair, "test"), policy] == pytest.approx(bleu.mean() / 2)
    assert "## Table 3: forgetting" in report
    assert (bli_table(store.read("tiny"))[["scratch", "body", "xattn"]] == 37.5).all().all()  # mean of 25% and 50%
    zeroshot = zeroshot_table(store.read("tiny")).set_index("policy")
    for policy, bleu in tests[tests["pair"] == "la-lb"].groupby("policy")["bleu"]:
        assert zeroshot.at[policy, "mean"] == pytest.approx(bleu.mean() + 1)
    assert "## Zero-shot translation" in report and "## Bilingual lexicon induction" in report


def test_report_command_end_to_end(study):
    done = xattn_ray("report", "--storage", "st", "--experiment", "tiny", "--out", "rep", cwd=study)
    assert done.returncode == 0, done.stderr
    report = (study / "rep" / "report.md").read_text()
    assert "| policy | lb-pv | la-lb |" in report
    # The significance table: the rows name their references.
    assert "| pair | policy | seed | BLEU | BLEU p | chrF | chrF p |" in report
    assert all((study / "rep" / name).is_file() for name in FIGURES)
    assert report.splitlines()[0] == "# Report: tiny"


def test_unknown_experiment_is_a_one_line_error_and_writes_nothing(study):
    done = xattn_ray("report", "--storage", "st", "--experiment", "nope", "--out", "nothing", cwd=study)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no results for experiment 'nope'" in done.stderr
    assert not (study / "nothing").exists()
