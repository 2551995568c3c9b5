"""Code-switching studies: the `codeswitch` section, the plan of its runs, the runs themselves, the runner.

The runs are real (tiny preset, a few thousand synthetic sentences, real SentencePiece and sacreBLEU);
the last test runs a whole study through `xattn-ray run` on a local Ray instance.
"""

import json
from pathlib import Path

import pytest
import torch

from xattn_ray.engine.checkpoint import load_model
from xattn_ray.study.codeswitch import load_study_data
from xattn_ray.study.config import load_experiment
from xattn_ray.errors import ConfigError
from xattn_ray.study.kinds import kind_of
from xattn_ray.study.runs import config_hash, parent_spec, run, run_folder, run_id
from xattn_ray.study.spec import RunSpec
from xattn_ray.store import ResultsStore

from support import EXPERIMENTS, xattn_ray

def config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert "\n" not in str(info.value)
    return str(info.value)


# -- the experiment file -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["codeswitch.yaml", "codeswitch-synthetic.yaml"])
def test_shipped_codeswitch_experiments_load(name):
    experiment = load_experiment(EXPERIMENTS / name)
    assert experiment.codeswitch is not None and not experiment.parents
    assert {"standard", "xlquery"} == set(experiment.grid.attention)


def test_codeswitch_mistakes_are_one_line_errors_at_their_key(tmp_path, tiny_study):
    good = tiny_study(tmp_path, "codeswitch").read_text()
    assert "codeswitch.pivot" in config_error(tmp_path, good.replace("pivot: pv", "pivot: lc"))
    assert "'lx' is not one of the sources" in config_error(tmp_path, good.replace("[lc, la]", "[lc, lx]"))
    assert "codeswitch.test_pairs" in config_error(tmp_path, good.replace("[lb, lc], [lc, la]", "[lb, la]"))
    assert "is also a training pair" in config_error(tmp_path, good.replace("[lb, lc], [lc, la]", "[lb, la]"))
    assert "grid.alphas" in config_error(tmp_path, good.replace("[[0.3, 0.3]]", "[[0.3, 1.5]]"))
    message = config_error(tmp_path, good.replace("[body, bitfit]", "[body, scratch]"))
    assert "grid.policies[1]" in message and "scratch" in message
    message = config_error(tmp_path, good.replace("attention: [standard, xlquery]", "attention: [standard]"))
    assert "codeswitch.pretrain" in message
    both = good + "parents:\n  - {name: p, pair: la-pv, corpus: synth}\n"
    assert "not both" in config_error(tmp_path, both)


def test_attention_axes_belong_to_codeswitch_studies(tmp_path):
    transfer = (EXPERIMENTS / "quickstart.yaml").read_text().replace("seeds: [1]", "seeds: [1]\n  attention: [xlquery]")
    assert "grid.attention" in config_error(tmp_path, transfer)


# -- the plan ------------------------------------------------------------------------------------


def test_plan_base_then_pretraining_per_alphas_then_the_grid(tmp_path, tiny_study):
    experiment = load_experiment(tiny_study(tmp_path, "codeswitch", alphas="[[0.3, 0.3], [0.6, 0.5]]", seeds="[1, 2]"))
    assert [spec.stage for spec in stages(experiment)[0]] == ["base"]
    pretraining = stages(experiment)[1]
    assert [spec.alphas for spec in pretraining] == [(0.3, 0.3), (0.6, 0.5)]
    runs = stages(experiment)[2]
    assert len(runs) == 2 * (1 + 2) * 2  # policies x (standard + xlquery per alphas) x seeds
    for spec in runs:
        parent = parent_spec(experiment, spec)
        if spec.attention == "xlquery":
            assert parent.stage == "pretrain" and parent.alphas == spec.alphas
        else:
            assert parent.stage == "base" and spec.alphas is None
    assert len({run_id(experiment, spec) for spec in runs + pretraining}) == len(runs) + 2
    xlquery = next(spec for spec in runs if spec.attention == "xlquery")
    assert RunSpec.from_dict(json.loads(json.dumps(xlquery.to_dict()))) == xlquery


def test_only_what_a_run_depends_on_changes_its_hash(tmp_path, tiny_study):
    first = load_experiment(tiny_study(tmp_path, "codeswitch"))
    second = load_experiment(tiny_study(tmp_path, "codeswitch", alphas="[[0.5, 0.5]]"))
    standard = RunSpec("codeswitch", "cs", 1, "body", attention="standard")
    assert config_hash(first, standard) == config_hash(second, standard)
    assert config_hash(first, stages(first)[2][1]) != config_hash(second, stages(second)[2][1])
    # Without Q_cross pretraining an xlquery run starts from the base: another run, another id.
    plain = load_experiment(tiny_study(tmp_path, "codeswitch", pretrain=""))
    assert parent_spec(plain, stages(plain)[2][1]).stage == "base"
    assert run_id(plain, stages(plain)[2][1]) != run_id(first, stages(first)[2][1])


# -- the runs, in this process -------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_study):
    """Base, Q_cross pretraining, and body + bitfit fine-tuning of an xlquery model, run in order."""
    folder = tmp_path_factory.mktemp("cs")
    experiment = load_experiment(tiny_study(folder, "codeswitch"))
    storage = folder / "storage"
    specs = stages(experiment)[0] + stages(experiment)[1] + \
        [spec for spec in stages(experiment)[2] if spec.attention == "xlquery"]
    outcomes = {(spec.stage, spec.policy): run(experiment, spec, storage) for spec in specs}
    return experiment, storage, specs, outcomes


def stages(experiment) -> list[list[RunSpec]]:
    """The study's runs, stage by stage: base, pretraining, fine-tuning."""
    return [stage.specs for stage in kind_of(experiment).stages(experiment)]


def weights(experiment, storage, spec) -> dict[str, torch.Tensor]:
    return load_model(run_folder(storage, experiment, spec).best_checkpoint).model.state_dict()


def test_base_is_scored_on_single_sentences_and_finetuning_on_every_kind(trained):
    experiment, storage, specs, outcomes = trained
    assert sorted(outcomes["base", None].tests) == ["test.mono.la", "test.mono.lb", "test.mono.lc"]
    assert outcomes["pretrain", None].tests == {}
    body = outcomes["codeswitch", "body"]
    assert sorted(body.tests) == ["test.mono.la", "test.mono.lb", "test.mono.lc", "test.seen.la+lb",
                                  "test.unseen.lb+lc", "test.unseen.lc+la"]
    folder = run_folder(storage, experiment, specs[2])
    references = folder.references("test.unseen.lb+lc").read_text().splitlines()
    hypotheses = folder.hypotheses("test.unseen.lb+lc").read_text().splitlines()
    assert len(references) == len(hypotheses) == 20
    assert json.loads(folder.result_file.read_text())["status"] == "ok"
    # The base trains on every source's kept lines, one example each (none here is too long for the model).
    kept = load_study_data(experiment, storage / "cache").base_train[experiment.codeswitch.pivot]
    assert outcomes["base", None].train_size == len(experiment.codeswitch.sources) * len(kept)


def test_pretraining_changes_only_q_cross_and_starts_it_from_q(trained):
    experiment, storage, specs, _ = trained
    base, pretrained = weights(experiment, storage, specs[0]), weights(experiment, storage, specs[1])
    changed = {name for name in pretrained if name not in base or not torch.equal(base[name], pretrained[name])}
    assert changed and all(".q_cross_proj." in name for name in changed)
    assert changed == {name for name in pretrained if ".q_cross_proj." in name}
    assert torch.equal(pretrained["encoder.layers.0.self_attn.q_proj.weight"], base["encoder.layers.0.self_attn.q_proj.weight"])


def test_bitfit_trains_only_biases_including_q_cross_and_body_no_embeddings(trained):
    experiment, storage, specs, _ = trained
    pretrained = weights(experiment, storage, specs[1])
    by_policy = {spec.policy: weights(experiment, storage, spec) for spec in specs[2:]}
    changed = {name for name, value in by_policy["bitfit"].items() if not torch.equal(value, pretrained[name])}
    assert changed and all(name.endswith(".bias") for name in changed)
    assert "encoder.layers.0.self_attn.q_cross_proj.bias" in changed
    changed = {name for name, value in by_policy["body"].items() if not torch.equal(value, pretrained[name])}
    assert not any(name.startswith(("src_embed.", "tgt_embed.")) for name in changed)
    assert "encoder.layers.0.self_attn.q_cross_proj.weight" in changed


# -- the whole study on Ray ----------------------------------------------------------------------


@pytest.mark.slow
def test_codeswitch_study_on_ray_stores_attention_and_alphas_reuses_runs_and_runs_ddp(tmp_path, tiny_study):
    study = tiny_study(tmp_path, "codeswitch", policies="[bitfit]")
    first = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[pretrain] 1 to train" in first.stdout and "[children] 2 to train" in first.stdout
    summary = first.stdout.split("BLEU, mean over each kind's test sets")[1]
    assert "bitfit xlquery 0.3/0.3" in summary and "bitfit standard" in summary and "unseen" in summary
    rows = ResultsStore(tmp_path / "st" / "results").read(experiment="cs")
    assert sorted(rows[rows["eval"] == "train"]["stage"]) == ["base", "codeswitch", "codeswitch", "pretrain"]
    tests = rows[(rows["eval"] == "test") & (rows["stage"] == "codeswitch")]
    assert len(tests) == 2 * 6 and not tests.duplicated(["run_id", "test_set"]).any()
    xlquery = tests[tests["attention"] == "xlquery"]
    assert set(xlquery["mono_alpha"]) == {0.3} and set(xlquery["cross_alpha"]) == {0.3}
    assert tests[tests["attention"] == "standard"]["mono_alpha"].isna().all()

    # Seed 2 on two DDP workers each (Ray Train): resources are not part of a run's identity.
    study.write_text(study.read_text().replace("seeds: [1]", "seeds: [1, 2]") + "resources: {workers: 2}\n")
    second = xattn_ray("run", study, "--storage", "st", "--num-cpus", "3", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "[parents] 0 to train, 1 finished earlier" in second.stdout
    assert "[pretrain] 0 to train, 1 finished earlier" in second.stdout
    assert "[children] 2 to train, 2 finished earlier" in second.stdout
    rows = ResultsStore(tmp_path / "st" / "results").read(experiment="cs")
    assert len(rows[rows["eval"] == "train"]) == 6
