"""Whole runs on tiny data: a parent, its children under every policy, `xattn-ray train` and `translate`."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xattn_ray.engine.checkpoint import load_model
from xattn_ray.store import ResultsStore
from xattn_ray.study.config import load_experiment
from xattn_ray.study.records import outcome_rows
from xattn_ray.study.runs import run, run_folder
from xattn_ray.study.spec import RunSpec
from xattn_ray.study.transfer import load_run_data, run_config
from xattn_ray.engine.policies import POLICIES

@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_study):
    root = tmp_path_factory.mktemp("study")
    experiment = load_experiment(tiny_study(root))  # tiny.yaml
    parent = run(experiment, RunSpec("parent", "la-pv", 1), root / "runs")
    return root, experiment, parent


def test_parent_run_trains_scores_and_records(study):
    root, experiment, parent = study
    assert parent.stop_reason == "max_updates" and parent.updates == 12
    assert parent.trainable_params == parent.total_params
    test = parent.tests["test"]
    assert test.sentences == 20 and 0.0 <= test.bleu <= 100.0
    assert "tok:13a" in test.bleu_signature
    folder = run_folder(root / "runs", experiment, RunSpec("parent", "la-pv", 1))
    record = json.loads(folder.result_file.read_text())
    assert record["tests"]["test"]["bleu"] == test.bleu
    assert folder.result() == parent
    assert len(folder.hypotheses("test").read_text().splitlines()) == 20 and test.hypotheses == str(folder.hypotheses("test"))


@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_policy_runs_on_a_new_source_child(study, policy):
    root, experiment, parent = study
    child = run(experiment, RunSpec("child", "lb-pv", 1, policy), root / "runs", Path(parent.checkpoint))
    assert child.side == "source" and child.updates == 12 and "test" in child.tests
    loaded = load_model(child.checkpoint)
    assert loaded.src_tokenizer.language == "lb" and loaded.tgt_tokenizer.language == "pv"
    parent_model = load_model(parent.checkpoint)
    # The target side never changes: same tokenizer bytes, and frozen embeddings (except from scratch).
    assert loaded.tgt_tokenizer.to_bytes() == parent_model.tgt_tokenizer.to_bytes()
    same_target_embeddings = (loaded.model.tgt_embed.tokens.weight == parent_model.model.tgt_embed.tokens.weight).all()
    assert bool(same_target_embeddings) == (policy != "scratch")


def test_new_target_child_keeps_the_parent_source_side(study):
    root, experiment, parent = study
    spec = RunSpec("child", "la-lb", 1, "xattn")
    child = run(experiment, spec, root / "runs", Path(parent.checkpoint))
    loaded = load_model(child.checkpoint)
    assert child.side == "target" and loaded.tgt_tokenizer.language == "lb"
    assert loaded.src_tokenizer.to_bytes() == load_model(parent.checkpoint).src_tokenizer.to_bytes()
    assert Path(child.checkpoint).parent == run_folder(root / "runs", experiment, spec).path


def test_a_four_policy_grid_on_one_child_slice_builds_its_shard_once(study, caplog):
    root, experiment, parent = study
    shutil.rmtree(root / "runs" / "cache" / "shards", ignore_errors=True)  # earlier tests built this child's
    caplog.set_level(logging.INFO, "xattn_ray.data.shards")
    for policy in ("scratch", "body", "xattn", "randxattn"):
        run(experiment, RunSpec("child", "la-lb", 2, policy), root / "runs", Path(parent.checkpoint))
    messages = [record.getMessage() for record in caplog.records]
    assert sum(message.startswith("shard built: ") for message in messages) == 1, messages
    assert sum(message.startswith("shard reused: ") for message in messages) == 3, messages


def test_rows_hold_the_pairs_left_after_cleaning_the_grid_options_and_the_curve(tmp_path, tiny_study):
    """Length filters drop pairs of the slices, so the pairs trained on are fewer than asked for."""
    experiment = load_experiment(tiny_study(tmp_path, name="filtered", extra="filters: {max_tokens: 10}",
                                            grid="grid: {policies: [xattn], seeds: [1], sizes: [100], "
                                                 "options: {lr: [0.002]}}"))
    parent_spec, child_spec = RunSpec("parent", "la-pv", 1), RunSpec("child", "lb-pv", 1, "xattn", 100, {"lr": 0.002})
    store = ResultsStore(tmp_path / "results")
    for spec in (parent_spec, child_spec):
        store.write(outcome_rows(experiment, spec, run(experiment, spec, tmp_path / "runs")))
    rows = store.table(filters=[("eval", "=", "train")]).to_pylist(maps_as_pydicts="strict")
    train = {row["stage"]: row for row in rows}
    for spec in (parent_spec, child_spec):
        # Counted apart from the run: a streamed pass over the slice, through the same filters.
        kept = load_run_data(experiment, run_config(experiment, spec), tmp_path / "runs" / "cache").train.scan().kept
        assert train[spec.stage]["train_size"] == kept
        assert run_folder(tmp_path / "runs", experiment, spec).result().train_size == kept
    assert train["child"]["train_size"] < 100 and train["parent"]["train_size"] < 250  # lines [0, 250]
    assert train["child"]["options"] == {"lr": 0.002} and train["parent"]["options"] == {}
    assert [point["update"] for point in train["child"]["valid_losses"]] == [6, 12]
    assert train["child"]["best_valid_loss"] == min(point["valid_loss"] for point in train["child"]["valid_losses"])


def xattn_ray(*args, cwd):
    return subprocess.run([sys.executable, "-m", "xattn_ray", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_cli_train_translate_and_mistakes(study):
    root, experiment, parent = study
    result = xattn_ray("train", "tiny.yaml", "--run", "lb-pv", "--policy", "bitfit", "--storage", "runs", cwd=root)
    assert result.returncode == 0, result.stderr
    assert "lb-pv (lb-pv, bitfit, seed 1): max_updates after 12 updates" in result.stdout
    assert "test: BLEU" in result.stdout

    missing = xattn_ray("train", "tiny.yaml", "--run", "lb-pv", "--policy", "xattn", "--seed", "9",
                        "--storage", "elsewhere", cwd=root)
    assert missing.returncode == 2 and "train the parent first" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    unknown = xattn_ray("train", "tiny.yaml", "--run", "lb-pv", "--policy", "xatn", "--storage", "runs", cwd=root)
    assert unknown.returncode == 2 and "unknown policy 'xatn'" in unknown.stderr

    sources = Path(root / "runs" / "cache" / "data").glob("*/test.la")
    lines = next(sources).read_text().splitlines()[:5] + [""]
    translated = subprocess.run([sys.executable, "-m", "xattn_ray", "translate", "--checkpoint", str(parent.checkpoint),
                                 "--beam", "2"], input="\n".join(lines) + "\n", capture_output=True, text=True,
                                timeout=300)
    assert translated.returncode == 0, translated.stderr
    assert len(translated.stdout.split("\n")) - 1 == len(lines)
