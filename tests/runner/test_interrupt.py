"""What a user can do to a running or finished study without corrupting it: Ctrl-C (once or twice),
retraining a parent under its finished children, a run that fails, and `train --parent-checkpoint`
with a checkpoint that is not the study's parent.

Every study runs `xattn-ray run` as a real process on a real local Ray instance; Ctrl-C is a real
SIGINT sent to that process's group, as a terminal sends it.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xattn_ray.engine.checkpoint import load_model, save_model
from xattn_ray.store import ResultsStore

from support import wait_for, xattn_ray

ONE_CHILD = "  - {pair: lb-pv, parent: la-pv, lines: [250, 400]}"
ONE_POLICY = "grid: {policies: [xattn], seeds: [1]}"


def start_study(study: Path, cwd: Path, *args: str) -> subprocess.Popen:
    """`xattn-ray run STUDY --storage st --num-cpus 2 ARGS` as a process of its own session (so a test
    can clean up the whole Ray instance it started), marked by XATTN_TEST_STUDY in its environment."""
    return subprocess.Popen([sys.executable, "-m", "xattn_ray", "run", str(study), "--storage", "st",
                             "--num-cpus", "2", "--progress-every", "1000", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "RAY_ADDRESS": "local", "XATTN_TEST_STUDY": str(cwd)})


def ctrl_c(process: subprocess.Popen) -> None:
    """Ctrl-C as a terminal sends it: SIGINT to every process of the foreground group (Ray's included)."""
    os.killpg(process.pid, signal.SIGINT)


def study_processes(marker: str) -> list[int]:
    """Pids of live processes whose environment holds `marker` (the driver and every Ray process it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes() and \
                        (entry / "stat").read_text().split(") ")[-1][0] != "Z":
                    found.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return found


def describe(pid: int) -> str:
    """A process's pid, parent pid and command line, for a failure message."""
    try:
        parent = (Path("/proc") / str(pid) / "stat").read_text().split(") ")[-1].split()[1]
        command = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} (parent {parent}): {command[:200]}"


def stop_session(process: subprocess.Popen) -> None:
    """Whatever is left of a study process's session (a failed test must not leave a Ray instance running)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)


def parent_running(runs: Path):
    """The parent's `last.pt` once its trial has checkpointed (it is still training then)."""
    return next(runs.glob("la-pv-*/last.pt"), None) if runs.is_dir() else None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def results(storage: Path, name: str) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in (storage / name / "runs").glob("*/result.json")}


def test_ctrl_c_while_the_parent_trains_stops_the_study_and_resume_finishes_it(tmp_path, tiny_study):
    # A parent that trains for a while, then one quick child.
    study = tiny_study(tmp_path, children=ONE_CHILD, grid=ONE_POLICY, updates=200,
                       every=10, extra="child_train: {lr: 0.003, warmup_updates: 5, max_tokens: 600, max_updates: 12, "
                                       "validate_every: 6, patience: 0}")
    runs = tmp_path / "st" / "tiny" / "runs"
    process = start_study(study, tmp_path)
    try:
        wait_for(lambda: parent_running(runs), 300, "the parent's first checkpoint", process)
        interrupted = time.monotonic()
        ctrl_c(process)
        output, errors = process.communicate(timeout=120)
        took = time.monotonic() - interrupted
    finally:
        stop_session(process)
    print(f"SIGINT to exit: {took:.1f} s")
    assert process.returncode == 130, output + errors
    assert "--resume" in errors.strip().splitlines()[-1] and "xattn-ray run" in errors, errors
    assert "[children]" not in output  # the children stage never started
    assert not any(folder.name.startswith("lb-pv") for folder in runs.iterdir())
    assert results(tmp_path / "st", "tiny") == {}
    rows = ResultsStore(tmp_path / "st" / "results").read(experiment="tiny")
    assert set(rows["stage"]) == {"parent"} and list(rows["status"]) == ["stopped"]
    assert "--resume" in rows["error"].iloc[0]

    refused = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", cwd=tmp_path)
    assert refused.returncode == 2 and "--resume" in refused.stderr  # an interrupted run is never silently redone

    resumed = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    finished = results(tmp_path / "st", "tiny")
    assert sorted((r["spec"]["stage"], r["status"], r["updates"]) for r in finished.values()) == [
        ("child", "ok", 12), ("parent", "ok", 200)]
    (parent,) = [r for r in finished.values() if r["spec"]["stage"] == "parent"]
    assert parent["parent_checkpoint_sha256"] is None
    for child in (r for r in finished.values() if r["spec"]["stage"] == "child"):
        assert child["parent_checkpoint_sha256"] == sha256(Path(parent["checkpoint"]))
    rows = ResultsStore(tmp_path / "st" / "results").read(experiment="tiny")
    assert set(rows["status"]) == {"ok"} and len(rows[rows["eval"] == "train"]) == 2


def test_a_second_ctrl_c_exits_at_once(tmp_path, tiny_study):
    study = tiny_study(tmp_path, updates=2000, every=10)
    runs = tmp_path / "st" / "tiny" / "runs"
    process = start_study(study, tmp_path)
    try:
        wait_for(lambda: parent_running(runs), 300, "the parent's first checkpoint", process)
        ctrl_c(process)
        time.sleep(0.2)
        interrupted = time.monotonic()
        ctrl_c(process)
        output, errors = process.communicate(timeout=30)
        took = time.monotonic() - interrupted
        # Ray's processes share the driver's fate: none of this study's is left behind.
        deadline = time.monotonic() + 60
        while study_processes(f"XATTN_TEST_STUDY={tmp_path}") and time.monotonic() < deadline:
            time.sleep(0.5)
        left = study_processes(f"XATTN_TEST_STUDY={tmp_path}")
    finally:
        stop_session(process)
    print(f"second SIGINT to exit: {took:.2f} s")
    assert process.returncode == 130 and took < 5, (process.returncode, took, errors[-2000:])
    assert "exiting now" in errors
    assert left == [], [describe(pid) for pid in left]
    assert results(tmp_path / "st", "tiny") == {}


@pytest.mark.slow
def test_a_child_of_a_changed_parent_trains_again_and_keeps_its_earlier_files(tmp_path, tiny_study):
    study = tiny_study(tmp_path, children=ONE_CHILD, grid=ONE_POLICY)
    first = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    before = results(tmp_path / "st", "tiny")
    (parent,) = [r for r in before.values() if r["spec"]["stage"] == "parent"]
    (child,) = [r for r in before.values() if r["spec"]["stage"] == "child"]
    best = Path(parent["checkpoint"])
    assert child["parent_checkpoint_sha256"] == sha256(best)
    rows = ResultsStore(tmp_path / "st" / "results").read(experiment="tiny")
    assert set(rows[rows["stage"] == "child"]["parent_checkpoint_sha256"]) == {sha256(best)}

    # The parent's best checkpoint becomes another file (as a retrained parent's would).
    loaded = load_model(best)
    save_model(best, loaded.model, loaded.src_tokenizer, loaded.tgt_tokenizer, {**loaded.extra, "retrained": True})
    again = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "stale" in again.stdout and "[children] 1 to train, 0 finished earlier" in again.stdout
    after = results(tmp_path / "st", "tiny")
    assert after[child["run_id"]]["parent_checkpoint_sha256"] == sha256(best)
    (kept,) = (tmp_path / "st" / "tiny" / "stale").iterdir()  # the stale child's files, whole
    earlier = json.loads((kept / "result.json").read_text())
    assert earlier["parent_checkpoint_sha256"] == child["parent_checkpoint_sha256"]
    rows = ResultsStore(tmp_path / "st" / "results").read(experiment="tiny")
    assert set(rows["status"]) == {"ok"}
    assert set(rows[rows["stage"] == "child"]["parent_checkpoint_sha256"]) == {sha256(best)}


@pytest.mark.slow
def test_a_failed_run_stores_its_root_cause_in_plain_text(tmp_path, tiny_study):
    study = tiny_study(tmp_path, children="  []")
    first = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    (best,) = (tmp_path / "st" / "tiny" / "runs").glob("la-pv-*/best.pt")
    best.write_bytes(b"not a checkpoint")  # every attempt of the child fails the same way
    tiny_study(tmp_path, children=ONE_CHILD, grid=ONE_POLICY)
    failed = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", cwd=tmp_path)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    rows = ResultsStore(tmp_path / "st" / "results").read(experiment="tiny")
    (error,) = rows[(rows["stage"] == "child") & (rows["status"] == "failed")]["error"]
    assert error.startswith("CheckpointError: ") and f"{best}: not a readable checkpoint" in error, error
    assert "\x1b" not in error and "\n" not in error and "Traceback" not in error and len(error) < 400


@pytest.mark.slow
def test_train_with_a_parent_checkpoint_of_another_model_is_checked_and_trains_in_its_own_folder(tmp_path, tiny_study):
    study = tiny_study(tmp_path, children=ONE_CHILD, grid=ONE_POLICY)
    other = tiny_study(tmp_path, name="wide", children=ONE_CHILD, grid=ONE_POLICY, model=", ffn_dim: 96")
    for args in ((study, "--run", "la-pv"), (study, "--run", "la-pv", "--seed", "2"), (other, "--run", "la-pv"),
                 (study, "--run", "lb-pv", "--policy", "xattn")):
        trained = xattn_ray("train", *args, cwd=tmp_path)
        assert trained.returncode == 0, trained.stdout + trained.stderr
    runs = tmp_path / "xattn-runs" / "tiny" / "runs"
    (own_child,) = runs.glob("lb-pv-*/result.json")
    written = own_child.read_bytes()
    (seed_two,) = [path for path in runs.glob("la-pv-*/best.pt")
                   if json.loads((path.parent / "result.json").read_text())["spec"]["seed"] == 2]
    (wide,) = (tmp_path / "xattn-runs" / "wide" / "runs").glob("la-pv-*/best.pt")

    for checkpoint, message in ((wide, "architecture differs from the model of experiment 'tiny': ffn_dim: "
                                       "expected 64, found 96"),
                                (own_child.parent / "best.pt",
                                 "a lb-pv model, but run 'lb-pv' starts from a la-pv parent")):
        refused = xattn_ray("train", study, "--run", "lb-pv", "--policy", "xattn", "--parent-checkpoint", checkpoint,
                            cwd=tmp_path)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1

    # Another parent of the right kind (seed 2): its child is another run, beside the study's own.
    elsewhere = xattn_ray("train", study, "--run", "lb-pv", "--policy", "xattn", "--parent-checkpoint", seed_two,
                          cwd=tmp_path)
    assert elsewhere.returncode == 0, elsewhere.stdout + elsewhere.stderr
    assert own_child.read_bytes() == written
    (result,) = (tmp_path / "xattn-runs" / "tiny" / "from-checkpoint").glob("*/result.json")
    recorded = json.loads(result.read_text())
    assert recorded["parent_checkpoint_sha256"] == sha256(seed_two)
    assert result.parent.name == recorded["run_id"] == f"{own_child.parent.name}-parent-{sha256(seed_two)[:8]}"
