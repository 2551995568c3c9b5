"""Reports of studies that went wrong: every child failed, no `train` rows, a code-switching study whose
fine-tuning all failed, failed analyses; and reports that cannot be written. Each says what it has, in
full or not at all.

The stores are real Parquet files written with `ResultsStore.write`, no study is run.
"""

from pathlib import Path

import pytest

from xattn_ray.errors import XattnError
from xattn_ray.report.build import build_report
from xattn_ray.store import ResultsStore, make_row

from support import xattn_ray

EXPERIMENT = "edge"
COSTS = dict(trainable_params=1000, total_params=4000, train_seconds=2.0, target_tokens_per_second=300.0, updates=10,
             valid_losses=[{"update": 5, "valid_loss": 3.0}, {"update": 10, "valid_loss": 2.5}])


def row(run_id: str, stage: str, evaluation: str, status: str = "ok", **fields) -> dict:
    error = None if status == "ok" else f"{run_id}: worker died"
    return make_row(experiment=EXPERIMENT, run_id=run_id, stage=stage, eval=evaluation, status=status, error=error,
                    **fields)


def parent_rows() -> list[dict]:
    parent = dict(pair="la-pv", seed=1)
    return [row("la-pv-s1", "parent", "train", **parent, **COSTS),
            row("la-pv-s1", "parent", "test", **parent, test_set="test", bleu=20.0, chrf=40.0)]


def failed_children() -> list[dict]:
    return [row(f"lb-pv-{policy}-s1", "child", "train", "failed", pair="lb-pv", parent_pair="la-pv", side="source",
                policy=policy, seed=1) for policy in ("scratch", "body", "xattn")]


def finished_child_tests(hypotheses: Path) -> list[dict]:
    """Test rows of body and xattn children, with no training rows; their files name `hypotheses`."""
    return [row(f"lb-pv-{policy}-s1", "child", "test", pair="lb-pv", parent_pair="la-pv", side="source",
                policy=policy, seed=1, test_set="test", bleu=bleu, hypotheses_uri=str(hypotheses),
                references_uri=str(hypotheses))
            for policy, bleu in (("body", 11.0), ("xattn", 12.5))]


def codeswitch_rows() -> list[dict]:
    """A code-switching study whose base finished and whose every fine-tuning run failed."""
    base = [row("base-s1", "base", "train", seed=1, attention="standard", **COSTS),
            row("base-s1", "base", "test", seed=1, attention="standard", test_set="test.mono.la", bleu=9.0)]
    return base + [row(f"cs-{policy}-{attention}-s1", "codeswitch", "train", "failed", policy=policy,
                       attention=attention, seed=1) for policy in ("body", "bitfit")
                   for attention in ("standard", "xlquery")]


def failed_analysis() -> list[dict]:
    """An analysis row without a seed, failed: the only row of its study."""
    return [row("zeroshot-lb-lc", "analysis", "zeroshot", "failed", pair="lb-lc", policy="xattn")]


def store_of(folder: Path, rows: list[dict]) -> ResultsStore:
    store = ResultsStore(folder)
    store.write(rows)
    return store


def test_every_child_failed_is_a_report_that_says_so(tmp_path):
    store = store_of(tmp_path / "results", parent_rows() + failed_children())
    report = build_report(store, EXPERIMENT, tmp_path / "out").read_text()
    assert "- training runs: 4 (1 finished, 3 failed or stopped)" in report
    assert "No finished child runs: every one failed or stopped (see Missing runs)." in report
    for policy in ("scratch", "body", "xattn"):
        assert f"| lb-pv-{policy}-s1 | child | lb-pv | {policy} | 1 | train | failed | lb-pv-{policy}-s1: worker died |" \
               in report
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["report.md"]  # no figure without numbers


def test_no_train_rows_is_a_report_that_says_so(tmp_path):
    hypotheses = tmp_path / "gone.txt"  # named by the rows, never written: the test cannot be run
    store = store_of(tmp_path / "results", finished_child_tests(hypotheses))
    report = build_report(store, EXPERIMENT, tmp_path / "out").read_text()
    assert "- training runs: none recorded (the store holds no `train` rows of this experiment)" in report
    assert "| body | **11.00** |" in report and "| xattn | **12.50 (+1.50)** |" in report
    assert "- no readable reference file (references_uri): lb-pv xattn s1" in report
    assert "## Cost" not in report


def test_codeswitch_study_whose_fine_tuning_all_failed(tmp_path):
    store = store_of(tmp_path / "results", codeswitch_rows())
    report = build_report(store, EXPERIMENT, tmp_path / "out").read_text()
    assert "- training runs: 5 (1 finished, 4 failed or stopped)" in report
    assert "No fine-tuning run finished: every one failed or stopped (see Missing runs)" in report
    assert "| base | 9.00 | 1 |" in report
    assert report.count("| codeswitch |") == 4


def test_failed_analysis_without_a_seed_is_listed(tmp_path):
    store = store_of(tmp_path / "results", failed_analysis())
    report = build_report(store, EXPERIMENT, tmp_path / "out").read_text()
    assert "| zeroshot-lb-lc | analysis | lb-lc | xattn |  | zeroshot | failed | zeroshot-lb-lc: worker died |" in report


def test_a_report_that_fails_while_building_writes_nothing(tmp_path):
    """The figures are built before the Markdown; a failure in the Markdown leaves no figure behind."""
    hypotheses = tmp_path / "hypotheses.txt"
    hypotheses.write_text("a\nb\n")
    store = store_of(tmp_path / "results", finished_child_tests(hypotheses) + parent_rows())
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("the last report\n")

    def unreadable_references(row):
        raise XattnError(f"{row['references_uri']}: cannot read")

    with pytest.raises(XattnError, match="cannot read"):
        build_report(store, EXPERIMENT, out, references_for=unreadable_references)
    assert [path.name for path in out.iterdir()] == ["report.md"]
    assert (out / "report.md").read_text() == "the last report\n"


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    """A folder with one store per situation, for the command."""
    folder = tmp_path_factory.mktemp("edge-stores")
    store_of(folder / "failed", parent_rows() + failed_children())
    store_of(folder / "codeswitch", codeswitch_rows())
    return folder


@pytest.mark.parametrize("store, expected", [
    ("failed", "No finished child runs: every one failed or stopped"),
    ("codeswitch", "No fine-tuning run finished"),
])
def test_report_command_on_a_study_that_failed(stores, tmp_path, store, expected):
    done = xattn_ray("report", "--store", stores / store, "--experiment", EXPERIMENT, "--out", tmp_path / "rep")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {tmp_path / 'rep' / 'report.md'}\n"
    assert expected in (tmp_path / "rep" / "report.md").read_text()
    assert not [path for path in (tmp_path / "rep").iterdir() if path.name.startswith(".")]


def test_report_command_mistakes_are_one_line_and_write_nothing(stores, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    done = xattn_ray("report", "--store", stores / "failed", "--experiment", EXPERIMENT, "--out", taken)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"xattn-ray: error: {taken}: a file is there; the report needs a folder\n"
    assert taken.read_text() == "mine\n"

    done = xattn_ray("report", "--store", stores / "failed", "--experiment", "other", "--out", tmp_path / "rep")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"xattn-ray: error: no results for experiment 'other' in {stores / 'failed'}\n"
    assert not (tmp_path / "rep").exists()


def test_a_report_is_never_written_into_the_store(tmp_path):
    """Reading the store never writes into it: the report's folder may not be the store or inside it."""
    store = store_of(tmp_path / "results", parent_rows() + failed_children())
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    for out in (tmp_path / "results", tmp_path / "results" / "report"):
        done = xattn_ray("report", "--store", store.uri, "--experiment", EXPERIMENT, "--out", out)
        assert done.returncode == 2 and done.stderr == (f"xattn-ray: error: --out {out} is inside the results store "
                                                        f"{store.uri}: write it elsewhere\n")
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before
