"""The Ray runner on a real local Ray instance: grids, reuse, resume after kills, DDP, search, job submit.

Every study here runs `xattn-ray run` in a subprocess (its own Ray instance, as a user would), on the
tiny preset and a few hundred synthetic sentences, so a trial takes seconds and Ray's start-up dominates.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xattn_ray.study.config import load_experiment
from xattn_ray.report.rows import counted_rows
from xattn_ray.report.transfer import child_bleu
from xattn_ray.runner.search import CellHistory, CellSearch
from xattn_ray.store import ResultsStore
from xattn_ray.study.spec import RunSpec
from xattn_ray.study.sweep import SearchConfig, SearchDomain

from support import (PROJECT, assert_exactly_once, free_port, lay_sacrebleu_release, stop_head, summaries,
                     trial_processes, wait_for, xattn_ray)



def test_grid_runs_reuses_finished_runs_and_writes_rows_once(tmp_path, tiny_study):
    """1 parent + 2 children x 2 policies on 2 CPUs; then a second seed trains only the 4 new runs."""
    study = tiny_study(tmp_path, grid="grid: {policies: [body, xattn], seeds: [1]}")
    first = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[children] 4 to train, 0 finished earlier" in first.stdout
    assert "xattn" in first.stdout.split("BLEU on each run")[1]
    runs = summaries(tmp_path / "st", "tiny")
    assert len(runs) == 5 and all(s["status"] == "ok" and s["updates"] == 12 for s in runs.values())
    assert_exactly_once(tmp_path / "st" / "results", "tiny", 5)

    study.write_text(study.read_text().replace("seeds: [1]", "seeds: [1, 2]"))
    before = {run_id: (tmp_path / "st" / "tiny" / "runs" / run_id / "result.json").stat().st_mtime for run_id in runs}
    second = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "[parents] 0 to train, 1 finished earlier" in second.stdout
    assert "[children] 4 to train, 4 finished earlier" in second.stdout
    assert all((tmp_path / "st" / "tiny" / "runs" / r / "result.json").stat().st_mtime == t for r, t in before.items())
    assert len(summaries(tmp_path / "st", "tiny")) == 9
    assert_exactly_once(tmp_path / "st" / "results", "tiny", 9)


def test_analyses_stage_writes_its_rows_once_and_is_reused(tmp_path, tiny_study):
    tiny_study(tmp_path, "analyses", grid="grid: {policies: [scratch, xattn], seeds: [1]}")  # ana.yaml
    first = xattn_ray("run", "ana.yaml", "--storage", "st", "--num-cpus", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[analyses] 4 to run, 0 done earlier" in first.stdout  # forgetting x2, bli, zeroshot (xattn)
    assert "zero-shot BLEU of stitched models" in first.stdout and "lexicon induction P@1" in first.stdout
    rows = ResultsStore(tmp_path / "st" / "results").read(experiment="ana")
    analyses = rows[rows["stage"] == "analysis"]
    assert sorted(analyses["eval"]) == ["bli"] * 3 + ["forgetting"] * 2 + ["zeroshot"]
    again = xattn_ray("run", "ana.yaml", "--storage", "st", "--num-cpus", "2", cwd=tmp_path)
    assert again.returncode == 0 and "[analyses] 0 to run, 4 done earlier" in again.stdout
    assert len(ResultsStore(tmp_path / "st" / "results").read(experiment="ana")) == len(rows)


def test_two_ddp_workers_follow_the_same_loss_curve_as_one(tmp_path, tiny_study):
    """Same global batch (1 x 1200 tokens vs 2 x 600), no dropout: the validation losses agree."""
    one = tiny_study(tmp_path, name="one", children="  []", max_tokens=1200, model=", dropout: 0.0, attention_dropout: 0.0",
                     extra="resources: {workers: 1}")
    two = tiny_study(tmp_path, name="two", children="  []", max_tokens=600, model=", dropout: 0.0, attention_dropout: 0.0",
                     extra="resources: {workers: 2}")
    for study in (one, two):  # 3 logical CPUs: a 2-worker trial holds its driver's CPU and one per worker
        result = xattn_ray("run", study, "--storage", "st", "--num-cpus", "3", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    (curve_one,), (curve_two,) = ([s["valid_curve"] for s in summaries(tmp_path / "st", name).values()]
                                  for name in ("one", "two"))
    assert [u for u, _ in curve_one] == [u for u, _ in curve_two] == [6, 12]
    for (_, loss_one), (_, loss_two) in zip(curve_one, curve_two):
        assert loss_two == pytest.approx(loss_one, abs=2e-3)


def test_a_killed_trial_resumes_from_its_checkpoint(tmp_path, tiny_study):
    study = tiny_study(tmp_path, children="  []", updates=600, every=20)
    marker = f"XATTN_TEST_STUDY={tmp_path}"
    process = subprocess.Popen([sys.executable, "-m", "xattn_ray", "run", str(study), "--storage", "st",
                                "--num-cpus", "2", "--progress-every", "1000"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "XATTN_TEST_STUDY": str(tmp_path)})
    try:
        checkpoint = wait_for(lambda: next((tmp_path / "st" / "tiny" / "runs").glob("*/last.pt"), None), 300,
                              "a checkpoint", process)
        # A quiet machine trains the whole run in a few seconds, so freeze the trial the moment its first
        # checkpoint exists (SIGSTOP) and kill it frozen: the kill always lands mid-run.
        trial = wait_for(lambda: trial_processes(marker), 30, "the trial's process", process)
        for pid in trial:
            os.kill(pid, signal.SIGSTOP)
        for pid in trial:
            os.kill(pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == 0, output
    (summary,) = summaries(tmp_path / "st", "tiny").values()
    assert summary["status"] == "ok" and summary["updates"] == 600
    # Tune's record of the trial: it failed once, and the retry (a new worker process) reported from the
    # checkpoint on (past update 20, since last.pt existed before the kill), never from the start again.
    trial_dir = next((tmp_path / "st" / "tiny" / "tune" / "parents").glob(f"{checkpoint.parent.name}*"))
    reports = tune_reports(tmp_path, checkpoint)
    assert reports[0]["pid"] in trial or reports[0]["update"] > 20
    retry = [r["update"] for r in reports if r["pid"] not in trial]
    assert retry and min(retry) > 20 and retry == sorted(retry)
    assert (trial_dir / "error.txt").is_file() or any(trial_dir.glob("error*"))
    assert_exactly_once(tmp_path / "st" / "results", "tiny", 1)


def tune_reports(tmp_path: Path, checkpoint: Path) -> list[dict]:
    """The reports Tune's result.json records for the trial of the run whose checkpoint is `checkpoint`."""
    trial_dir = next((tmp_path / "st" / "tiny" / "tune" / "parents").glob(f"{checkpoint.parent.name}*"), None)
    if trial_dir is None or not (trial_dir / "result.json").is_file():
        return []
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


@pytest.mark.slow
def test_a_killed_driver_is_resumed_without_retraining_finished_runs(tmp_path, tiny_study):
    study = tiny_study(tmp_path, grid="grid: {policies: [body, xattn], seeds: [1]}", updates=200, every=20)
    process = subprocess.Popen([sys.executable, "-m", "xattn_ray", "run", str(study), "--storage", "st",
                                "--num-cpus", "2", "--progress-every", "1000"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    runs = tmp_path / "st" / "tiny" / "runs"
    try:
        # Kill the driver (and the local Ray instance it started) once some child has finished while
        # others are still training.
        wait_for(lambda: len(summaries(tmp_path / "st", "tiny")) >= 2 and
                 any((d / "last.pt").is_file() and not (d / "result.json").is_file() for d in runs.iterdir()),
                 500, "a finished child beside an unfinished one", process)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    finished = {run_id: (runs / run_id / "result.json").stat().st_mtime for run_id in summaries(tmp_path / "st", "tiny")}

    refused = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", cwd=tmp_path)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    resumed = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = summaries(tmp_path / "st", "tiny")
    assert len(after) == 5 and all(s["updates"] == 200 for s in after.values())
    assert all((runs / r / "result.json").stat().st_mtime == t for r, t in finished.items())
    assert_exactly_once(tmp_path / "st" / "results", "tiny", 5)


def search_section(space: str, samples: int, seed: int = 0) -> str:
    return f"search:\n  space: {space}\n  samples: {samples}\n  metric: valid_loss\n  seed: {seed}\n"


def train_rows(storage: Path, name: str):
    rows = ResultsStore(storage / "results").read(experiment=name)
    return rows[(rows["stage"] == "child") & (rows["eval"] == "train")]


def test_tune_then_confirm_trains_each_cells_best_configuration_with_every_seed(tmp_path, tiny_study):
    extra = search_section("{lr: {loguniform: [0.0005, 0.01]}}", samples=2)
    study = tiny_study(tmp_path, children="  - {pair: lb-pv, parent: la-pv, lines: [250, 400]}",
                       grid="grid: {policies: [body, xattn], seeds: [1, 2]}", extra=extra)
    result = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    children = [s for s in summaries(tmp_path / "st", "tiny").values() if s["spec"]["stage"] == "child"]
    trials = [s for s in children if s["spec"]["seed"] == 1]
    assert len(trials) == 4 and len({s["spec"]["options"]["lr"] for s in trials}) == 4  # 2 cells x 2 samples
    best = json.loads((tmp_path / "st" / "tiny" / "search-best.json").read_text())
    assert len(best) == 2
    for record in best:  # the best of its cell by validation loss, then the same configuration at seed 2
        policy = record["run_id"].split("-")[2]
        cell = [s for s in trials if s["spec"]["policy"] == policy]
        assert record["valid_loss"] == min(s["best_valid_loss"] for s in cell)
        confirmation = [s for s in children if s["spec"]["seed"] == 2 and s["spec"]["policy"] == policy]
        assert [s["spec"]["options"] for s in confirmation] == [record["options"]]
    rows = train_rows(tmp_path / "st", "tiny")
    chosen = {record["run_id"] for record in best}
    assert set(rows[rows["selection"] == "confirmed"]["seed"]) == {1, 2}
    assert set(rows[(rows["selection"] == "confirmed") & (rows["seed"] == 1)]["run_id"]) == chosen
    assert (rows["selection"] == "search").sum() == 2 and (rows["selection"] == "confirmed").sum() == 4
    assert_exactly_once(tmp_path / "st" / "results", "tiny", 7)  # the parent, 4 trials, 2 confirmations

    # The report counts the confirmed runs only (2 seeds a cell) and says how each cell chose.
    report = xattn_ray("report", "--store", "st/results", "--experiment", "tiny", "--out", "rep", cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "## Configurations chosen by search" in text and "lowest validation loss" in text
    frame = counted_rows(ResultsStore(tmp_path / "st" / "results").read(experiment="tiny"))
    assert set(child_bleu(frame)["seeds"]) == {2}

    # Run again: nothing is searched or trained, nothing is written twice.
    mtimes = {path: path.stat().st_mtime for path in (tmp_path / "st" / "tiny" / "runs").glob("*/result.json")}
    again = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[search] 0 grid cells to search" in again.stdout and "[confirm] 0 to train, 4 finished" in again.stdout
    assert {path: path.stat().st_mtime for path in mtimes} == mtimes
    assert_exactly_once(tmp_path / "st" / "results", "tiny", 7)


def first_draw_seed(space: dict, value: float) -> int:
    """A search seed whose first suggestion for a cell is `value` (so a test knows the order of its trials)."""
    for seed in range(50):
        search = SearchConfig(space=space, samples=1, seed=seed)
        cell = CellSearch([RunSpec("child", "lb-pv", 1, "xattn")], search, [1], [CellHistory()])
        if RunSpec.from_dict(cell.suggest("t")["spec"]).options["lr"] == value:
            return seed
    raise AssertionError(f"no seed draws {value} first")


def test_a_resumed_search_continues_and_a_better_configuration_supersedes_the_confirmed_one(tmp_path, tiny_study):
    space = {"lr": SearchDomain(choice=[1e-6, 5e-3])}  # 1e-6 barely trains: 5e-3 is better
    seed = first_draw_seed(space, 1e-6)

    def run(samples: int):
        study = tiny_study(tmp_path, children="  - {pair: lb-pv, parent: la-pv, lines: [250, 400]}",
                           grid="grid: {policies: [xattn], seeds: [1, 2]}",
                           extra=search_section("{lr: {choice: [0.000001, 0.005]}}", samples, seed)
                           + "analyses: {forgetting: true}\n")
        result = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    run(samples=1)
    rows = train_rows(tmp_path / "st", "tiny")
    assert sorted(json.loads(h)["options"]["lr"] for h in rows["hparams"]) == [1e-6, 1e-6]

    resumed = run(samples=2)  # one more trial, not two: the first is reused and told to Optuna
    assert "[search] 1 grid cells to search" in resumed
    rows = ResultsStore(tmp_path / "st" / "results").read(experiment="tiny")
    label = {(json.loads(row.hparams)["options"]["lr"], row.seed, row.eval): row.selection
             for row in rows[rows["stage"].isin(["child", "analysis"])].itertuples()}
    assert label == {
        (1e-6, 1, "train"): "search", (1e-6, 1, "test"): "search",
        (1e-6, 2, "train"): "superseded", (1e-6, 2, "test"): "superseded",
        (1e-6, 1, "forgetting"): "superseded", (1e-6, 2, "forgetting"): "superseded",
        (5e-3, 1, "train"): "confirmed", (5e-3, 1, "test"): "confirmed",
        (5e-3, 2, "train"): "confirmed", (5e-3, 2, "test"): "confirmed",
        (5e-3, 1, "forgetting"): "confirmed", (5e-3, 2, "forgetting"): "confirmed"}
    assert_exactly_once(tmp_path / "st" / "results", "tiny", 5)  # the parent, 2 trials, 2 confirmations


def test_asha_stops_weak_trials_of_a_search_and_records_them(tmp_path, tiny_study):
    search = ("grid: {policies: [xattn], seeds: [1]}\n"
              "search:\n  space: {lr: {loguniform: [0.00001, 0.01]}}\n  samples: 4\n  scheduler: asha\n"
              "  grace_validations: 1\n")
    study = tiny_study(tmp_path, children="  - {pair: lb-pv, parent: la-pv, lines: [250, 400]}", extra=search,
                       updates=24, every=6)
    result = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = ResultsStore(tmp_path / "st" / "results").read(experiment="tiny")
    children = rows[(rows["stage"] == "child") & (rows["eval"] == "train")]
    assert len(children) == 4 and set(children["status"]) <= {"ok", "stopped"}
    assert (children["status"] == "stopped").any()  # ASHA halves the field at each rung
    assert json.loads((tmp_path / "st" / "tiny" / "search-best.json").read_text())[0]["run_id"] in set(
        children[children["status"] == "ok"]["run_id"])


@pytest.mark.slow
def test_ray_job_submit_runs_a_study_on_a_local_head(tmp_path, tiny_study):
    study = tiny_study(tmp_path, children="  - {pair: lb-pv, parent: la-pv, lines: [250, 400]}",
                       grid="grid: {policies: [xattn], seeds: [1]}")
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    port, dashboard = "6391", "8271"
    ray = Path(sys.executable).parent / "ray"
    ray = str(ray) if ray.exists() else "ray"
    # `--block` keeps the head's processes under this one process group, so the test stops exactly
    # this head (`ray stop` would stop every Ray instance on the machine).
    # The job agent's port is Ray's fixed default (52365) unless given: another Ray instance on this
    # machine (a study someone runs) would hold it, and the head would never get an agent.
    head = subprocess.Popen([ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", port,
                             "--dashboard-host", "127.0.0.1", "--dashboard-port", dashboard, "--num-cpus", "2",
                             "--dashboard-agent-listen-port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    try:
        submit = [ray, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", str(tmp_path),
                  "--", sys.executable, "-m", "xattn_ray", "run", study.name, "--storage", str(tmp_path / "st"),
                  "--address", "auto"]
        deadline = time.monotonic() + 120
        # The job server answers a few seconds after the head starts, and its job agent a little later
        # (on a loaded machine, tens of seconds): both refusals are retried until the deadline.
        starting = ("Failed to connect", "No available agent to submit job")
        while True:
            submitted = subprocess.run(submit, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
            if submitted.returncode == 0 or time.monotonic() > deadline or "succeeded" in submitted.stdout.lower():
                break
            if head.poll() is not None:
                raise AssertionError(f"the head stopped: {head.stdout.read()}")
            if not any(refusal in submitted.stdout + submitted.stderr for refusal in starting):
                break
            time.sleep(2)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert "succeeded" in submitted.stdout.lower()
    finally:
        stop_head(head)
    assert len(summaries(tmp_path / "st", "tiny")) == 2
    assert_exactly_once(tmp_path / "st" / "results", "tiny", 2)


def test_wmt_paper_study_validates_with_data_paths_as_parameters(tmp_path):
    """Its files under XATTN_WMT, its newstest2014 Fr-En and newstest2016 Ro-En in sacreBLEU's cache at
    SACREBLEU, as sacreBLEU leaves them after downloading them (so validate needs no network)."""
    import gzip

    for pair in ("fr-en", "ro-en", "ja-en", "de-en", "ha-en", "fr-es", "fr-de"):
        (tmp_path / pair).mkdir()
        for split in ("train", "valid", "test"):
            for lang in pair.split("-"):
                with gzip.open(tmp_path / pair / f"{split}.{lang}.gz", "wt") as file:
                    file.write("".join(f"{lang} sentence {i}\n" for i in range(20)))
    for name, pair in (("wmt14", "fr-en"), ("wmt16", "ro-en")):
        source, target = pair.split("-")
        lay_sacrebleu_release(tmp_path / "sacrebleu", name, pair,
                              [(source, [(f"{source} news {i}", f"{target} news {i}") for i in range(12)])])
    result = xattn_ray("validate", PROJECT / "experiments" / "wmt-paper.yaml", "--storage", tmp_path / "st",
                       cwd=tmp_path, env={"XATTN_WMT": str(tmp_path), "SACREBLEU": str(tmp_path / "sacrebleu")})
    assert result.returncode == 0, result.stderr
    assert "24 child runs = 6 children x 4 policies" in result.stdout
    assert "newstest 12 (sacreBLEU wmt14)" in result.stdout and "newstest 12 (sacreBLEU wmt16)" in result.stdout
    assert "newstest 20" in result.stdout  # the children's test files
    experiment = load_experiment(PROJECT / "experiments" / "wmt-paper.yaml")
    assert experiment.model.preset == "base" and experiment.resources.workers == 8
