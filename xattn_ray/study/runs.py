"""What identifies a run of a study: the hash of everything it depends on, its id and folder; running it.

Its config hash covers every setting that changes what the run computes (data slice, corpus, filters,
tokenizer, model, training and evaluation options, policy, seed) and, for a run that starts from
another, that run's hash. The run id puts a readable label before that hash, so

    quickstart/runs/lb-pv-xattn-s1-3f2a9c01/

is the same folder for the same run in every invocation (a restarted study resumes in place), and a
changed setting gives a new folder instead of silently reusing a stale checkpoint. What differs
between kinds of study is asked of the kind (`study.kinds`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from xattn_ray.engine.train import Reporter, TrainConfig
from xattn_ray.study.config import Experiment, apply_options
from xattn_ray.study.kinds import kind_of
from xattn_ray.study.run_folder import Result, RunFolder
from xattn_ray.study.spec import RunSpec, model_options, run_label
from xattn_ray.study.training import ModelWrapper, RunContext


def all_specs(experiment: Experiment) -> list[RunSpec]:
    """Every run of the study's grid, stage by stage (a search adds runs of its own: runner.search)."""
    return [spec for stage in kind_of(experiment).stages(experiment) for spec in stage.specs]


def parent_spec(experiment: Experiment, spec: RunSpec) -> RunSpec | None:
    """The run `spec` starts from (a parent, the base, Q_cross pretraining), or None."""
    return kind_of(experiment).parent_spec(experiment, spec)


def train_config(experiment: Experiment, spec: RunSpec) -> TrainConfig:
    """The run's training options: its kind's, then the grid/search options, then the seed."""
    base = kind_of(experiment).base_train_config(experiment, spec)
    return dataclasses.replace(apply_options(base, spec.options), seed=spec.seed)


def config_hash(experiment: Experiment, spec: RunSpec) -> str:
    """sha256 over everything the run's result depends on (hex)."""
    payload = {
        "stage": spec.stage, "filters": dataclasses.asdict(experiment.filters),
        "tokenizer": dataclasses.asdict(experiment.tokenizer), "model": dataclasses.asdict(experiment.model),
        "model_options": model_options(spec), "train": dataclasses.asdict(train_config(experiment, spec)),
        "evaluation": dataclasses.asdict(experiment.evaluation),
        **kind_of(experiment).hash_payload(experiment, spec),
    }
    parent = parent_spec(experiment, spec)
    if parent is not None:
        payload["parent"] = config_hash(experiment, parent)
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run_id(experiment: Experiment, spec: RunSpec) -> str:
    """Stable id of a run: its label and the first 8 hex digits of its config hash."""
    return f"{run_label(spec)}-{config_hash(experiment, spec)[:8]}"


def run_folder(storage: Path, experiment: Experiment, spec: RunSpec) -> RunFolder:
    """Where a run keeps its checkpoints, translations and `result.json`."""
    return RunFolder(Path(storage) / experiment.name / "runs" / run_id(experiment, spec))


def existing_folders(storage: Path, experiment: Experiment) -> list[RunFolder]:
    """The run folders of the study under `storage`, whatever created them (a search's trials, too)."""
    runs = Path(storage) / experiment.name / "runs"
    return [RunFolder(path) for path in sorted(runs.iterdir()) if path.is_dir()] if runs.is_dir() else []


def run(experiment: Experiment, spec: RunSpec, storage: Path, parent_checkpoint: Path | None = None,
        reporter: Reporter | None = None, resume: bool = False, wrap_model: ModelWrapper | None = None,
        score_valid: bool = False) -> Result:
    """Train and score one run in this process; a run with a parent starts from that parent's best
    checkpoint under `storage` unless `parent_checkpoint` names another."""
    storage = Path(storage)
    parent = parent_spec(experiment, spec)
    if parent_checkpoint is None and parent is not None:
        parent_checkpoint = run_folder(storage, experiment, parent).best_checkpoint
    context = RunContext(experiment=experiment, spec=spec, run_id=run_id(experiment, spec),
                         config_hash=config_hash(experiment, spec), train_config=train_config(experiment, spec),
                         folder=run_folder(storage, experiment, spec), parent_checkpoint=parent_checkpoint,
                         cache=storage / "cache", reporter=reporter, resume=resume, wrap_model=wrap_model,
                         score_valid=score_valid)
    return kind_of(experiment).run(context)
