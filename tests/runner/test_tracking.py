"""Experiment tracking: a study's trials in a real MLflow file store and in W&B's offline run files.

The two studies run `xattn-ray run` in a subprocess on a real local Ray instance, as a user would (tiny
preset, one parent and one child: two trials, about 40 s each). MLflow's store is read back with its
own client; W&B's offline runs are read from their `.wandb` files (no network: W&B is offline). The
section's mistakes are checked in this process, on the loaded experiment.
"""

import json
import os
import struct
import sys
from pathlib import Path

import pytest

from xattn_ray.errors import ConfigError, XattnError
from xattn_ray.store import ResultsStore
from xattn_ray.study.config import load_experiment
from xattn_ray.study.runs import all_specs, run_id
from xattn_ray.study.tracking import with_tracking

from support import assert_exactly_once, summaries, xattn_ray

ONE_CHILD = "  - {pair: lb-pv, parent: la-pv, lines: [250, 400]}"
GRID = "grid: {policies: [xattn], seeds: [1]}"


def flattened(nested: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 0.003}} -> {"train/lr": 0.003}: how MLflow's parameters are named."""
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict) and value:
            flat.update(flattened(value, f"{prefix}{key}/"))
        elif not isinstance(value, dict):
            flat[f"{prefix}{key}"] = value
    return flat


def stored_runs(storage: Path, name: str) -> dict[str, dict]:
    """Each run's train row and its test rows' scores, from the results store, by run id."""
    rows = ResultsStore(storage / "results").read(experiment=name)
    runs = {row["run_id"]: {"hparams": json.loads(row["hparams"]), "tests": {}}
            for row in rows[rows["eval"] == "train"].to_dict("records")}
    for row in rows[rows["eval"] == "test"].to_dict("records"):
        runs[row["run_id"]]["tests"][row["test_set"]] = (row["bleu"], row["chrf"])
    return runs


def test_mlflow_file_store_gets_one_run_per_trial_with_its_configuration_and_curves(tmp_path, tiny_study,
                                                                                      monkeypatch):
    """The section's relative `uri` is a file store beside the experiment file, whatever the working folder."""
    (tmp_path / "study").mkdir()
    (tmp_path / "elsewhere").mkdir()
    study = tiny_study(tmp_path / "study", children=ONE_CHILD, grid=GRID,
                       extra="tracking: {backend: mlflow, uri: mlruns, experiment: tiny-tracked}")
    done = xattn_ray("run", study, "--storage", tmp_path / "st", "--num-cpus", "2", cwd=tmp_path / "elsewhere")
    assert done.returncode == 0, done.stdout + done.stderr
    assert_exactly_once(tmp_path / "st" / "results", "tiny", 2)
    assert (tmp_path / "study" / "mlruns").is_dir() and not (tmp_path / "elsewhere" / "mlruns").exists()

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only when told to
    client = MlflowClient((tmp_path / "study" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("tiny-tracked")
    runs = client.search_runs([experiment.experiment_id])
    results, stored = summaries(tmp_path / "st", "tiny"), stored_runs(tmp_path / "st", "tiny")
    # one MLflow run per trial, named by its run id
    assert sorted(run.info.run_name for run in runs) == sorted(results) == sorted(stored)
    tracked = {run.info.run_name: run for run in runs}
    for identifier, run in tracked.items():
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert params["run_id"] == identifier and params["experiment"] == "tiny"
        # the resolved configuration the store records, every value of it (MLflow keeps parameters as text)
        assert {key: params[key] for key in flattened(stored[identifier]["hparams"])} == \
            {key: str(value) for key, value in flattened(stored[identifier]["hparams"]).items()}
        assert params["train/lr"] == "0.003" and params["model/preset"] == "tiny"

        def curve(metric: str) -> list[float]:
            return [point.value for point in client.get_metric_history(run.info.run_id, metric)]

        assert curve("update") == [6, 12, 12]  # the two validations, then the final report
        assert curve("valid_loss") == pytest.approx([loss for _, loss in results[identifier]["valid_curve"]])
        assert len(curve("train_loss")) == len(curve("lr")) == len(curve("target_tokens_per_second")) == 2
        assert curve("best_valid_loss")[-1] == pytest.approx(results[identifier]["best_valid_loss"])
        (bleu, chrf), = stored[identifier]["tests"].values()
        assert curve("bleu/test") == pytest.approx([bleu]) and curve("chrf/test") == pytest.approx([chrf])
        assert not [key for key in run.data.metrics if key.startswith("config/") or key in ("pid", "timestamp")]


def test_wandb_offline_writes_one_run_per_trial_named_by_its_run_id(tmp_path, tiny_study):
    """`--tracking wandb` on a file without a section: the backend's defaults (project: the study's
    name) and the environment's settings (offline, files under WANDB_DIR)."""
    study = tiny_study(tmp_path, children=ONE_CHILD, grid=GRID)
    files = tmp_path / "wandb-files"
    done = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", "--tracking", "wandb", cwd=tmp_path,
                     env={"WANDB_MODE": "offline", "WANDB_DIR": str(files), "WANDB_SILENT": "true"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert_exactly_once(tmp_path / "st" / "results", "tiny", 2)

    folders = sorted((files / "wandb").glob("offline-run-*"))
    runs = [wandb_records(next(folder.glob("*.wandb"))) for folder in folders]
    stored = stored_runs(tmp_path / "st", "tiny")
    assert len(folders) == 2 and sorted(run["name"] for run in runs) == sorted(stored)
    for run in runs:
        assert run["project"] == "tiny"
        assert run["config"]["run_id"] == run["name"]
        assert run["config"]["train"] == stored[run["name"]]["hparams"]["train"]
        final = run["history"][-1]
        (bleu, chrf), = stored[run["name"]]["tests"].values()
        assert final["bleu/test"] == pytest.approx(bleu) and final["chrf/test"] == pytest.approx(chrf)
        assert [step["update"] for step in run["history"]] == [6, 12, 12]
    assert sorted(run["group"] for run in runs) == ["children", "parents"]  # Tune's run: the stage


def wandb_records(path: Path) -> dict:
    """The run record (name, project, group, config) and the history steps of one W&B `.wandb` file.

    The file is W&B's header (":W&B", 2 magic bytes, a version byte) and then a LevelDB log: 32 KiB
    blocks of chunks, each a 7-byte header (CRC32, length, type: 1 whole, 2 first, 3 middle, 4 last)
    and its bytes; a block's last < 7 bytes are padding. Each record is a protobuf `Record` of W&B's.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, pending, run = 7, b"", {"history": []}
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record.FromString(pending)
            pending = b""
            if record.HasField("run"):
                run.update(name=record.run.display_name, project=record.run.project, group=record.run.run_group,
                           config=_items(record.run.config.update))
            elif record.HasField("history"):
                run["history"].append(_items(record.history.item))
    return run


def _items(items) -> dict:
    """A W&B record's items as {key: value}; a key may come as `key` or as the one part of `nested_key`."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


# -- the section itself --------------------------------------------------------------------------------

def test_tracking_is_no_part_of_a_run_id(tmp_path, tiny_study):
    plain = load_experiment(tiny_study(tmp_path, name="a", grid="grid: {policies: [body, xattn], seeds: [1, 2]}"))
    tracked = load_experiment(tiny_study(tmp_path, name="a", grid="grid: {policies: [body, xattn], seeds: [1, 2]}",
                                         extra="tracking: {backend: wandb, project: p, mode: offline}"))
    assert tracked.tracking is not None
    assert [run_id(plain, spec) for spec in all_specs(plain)] == [run_id(tracked, spec) for spec in all_specs(tracked)]
    assert [run_id(tracked, spec) for spec in all_specs(with_tracking(tracked, "mlflow"))] == \
        [run_id(plain, spec) for spec in all_specs(plain)]


@pytest.mark.parametrize("section, expected", [
    ("{backend: neptune}", "tracking.backend: must be one of mlflow, wandb, got 'neptune'"),
    ("{backend: mlflow, project: p}", "tracking.project: not a key of MLflow tracking (it takes: uri, experiment)"),
    ("{backend: wandb, uri: mlruns}", "tracking.uri: not a key of Weights & Biases tracking (it takes: project, "
                                      "entity, mode, dir)"),
    ("{backend: wandb, mode: sometimes}", "tracking.mode: must be one of online, offline, disabled, got 'sometimes'"),
    ("{backend: wandb, project: a/b}", "tracking.project: 'a/b': W&B names cannot hold any of"),
    ("{backend: mlflow, uri: 'file://mlruns'}", "tracking.uri: file://mlruns names the host 'mlruns'"),
    ("{backend: mlflow, experiment: ''}", "tracking.experiment: is empty"),
    ("{mlflow: {uri: x}}", "tracking.mlflow: unknown key"),
])
def test_section_mistakes_name_the_key(tmp_path, tiny_study, section, expected):
    study = tiny_study(tmp_path, extra=f"tracking: {section}")
    line = study.read_text().splitlines().index(f"tracking: {section}") + 1
    with pytest.raises(ConfigError) as raised:
        load_experiment(study)
    assert str(raised.value).startswith(f"{study}:{line}: {expected}") and "\n" not in str(raised.value)


@pytest.mark.parametrize("backend", ["mlflow", "wandb"])
def test_a_backend_that_is_not_installed_names_the_extra(tmp_path, tiny_study, monkeypatch, backend):
    """A module set to None in sys.modules is one Python cannot import: the package, as if not installed."""
    experiment = load_experiment(tiny_study(tmp_path, name="plain"))
    file = tiny_study(tmp_path, extra=f"tracking: {{backend: {backend}}}")
    monkeypatch.setitem(sys.modules, backend, None)
    with pytest.raises(ConfigError, match=rf"tracking.backend: tracking with .* needs the {backend} package, which "
                                          r"is not installed: pip install 'xattn-ray\[tracking\]'$"):
        load_experiment(file)
    with pytest.raises(ConfigError, match=rf"^--tracking {backend}: .* pip install 'xattn-ray\[tracking\]'$"):
        with_tracking(experiment, backend)


def test_the_command_line_chooses_the_backend_and_keeps_the_files_section_of_it(tmp_path, tiny_study):
    experiment = load_experiment(tiny_study(tmp_path, extra="tracking: {backend: mlflow, experiment: mine}"))
    assert with_tracking(experiment, "mlflow").tracking.experiment == "mine"
    chosen = with_tracking(experiment, "wandb")
    assert chosen.tracking.backend == "wandb" and chosen.tracking.project is None
    assert chosen.base_dir == experiment.base_dir == tmp_path  # relative paths still resolve against the file
    assert with_tracking(experiment, "none").tracking is None


def test_the_sections_wandb_mode_is_the_studys_and_online_needs_a_login(tmp_path, tiny_study, monkeypatch):
    """Ray's W&B callback asks for an API key unless the environment's WANDB_MODE is offline: the section's
    `mode` is put there. Its `dir` is relative to the experiment file."""
    from xattn_ray.runner.tracking import open_tracking

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no W&B login of this machine's user either
    offline = load_experiment(tiny_study(tmp_path, extra="tracking: {backend: wandb, mode: offline, dir: wb}"))
    open_tracking(offline, tmp_path / "st")
    assert os.environ["WANDB_MODE"] == "offline" and (tmp_path / "wb").is_dir()
    online = load_experiment(tiny_study(tmp_path, name="live", extra="tracking: {backend: wandb, mode: online}"))
    with pytest.raises(XattnError, match=r"^Weights & Biases tracking \(.*/st/wandb\): No WandB API key found"):
        open_tracking(online, tmp_path / "st")


def test_a_tracker_that_cannot_open_is_one_line_before_anything_trains(tmp_path, tiny_study):
    study = tiny_study(tmp_path, children=ONE_CHILD, extra="tracking: {backend: mlflow, uri: 'nosuch://tracker'}")
    done = xattn_ray("-q", "run", study, "--storage", "st", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("xattn-ray: error: MLflow tracking (nosuch://tracker): ") and "nosuch" in done.stderr
    assert not (tmp_path / "st" / "results").exists() and not (tmp_path / "st" / "tiny").exists()
