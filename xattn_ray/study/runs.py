"""What identifies a run of a study: the hash of everything it depends on, its id and folder; running it.

Its config hash covers every setting that changes what the run computes (data slice, corpus, filters,
tokenizer, model, training and evaluation options, policy, seed) and, for a run that starts from
another, that run's hash. The run id puts a readable label before that hash, so

    quickstart/runs/lb-pv-xattn-s1-3f2a9c01/

is the same folder for the same run in every invocation (a restarted study resumes in place), and a
changed setting gives a new folder instead of silently reusing a stale checkpoint. What differs
between kinds of study is asked of the kind (`study.kinds`).

A run with a parent starts only from a parent that finished (`unfinished_parent`) and records the
sha256 of the checkpoint it started from; a finished run whose parent's best checkpoint is now another
file is stale (`stale_reason`): the runner sets its folder aside (`set_aside`) and trains it again. A
run started from a checkpoint given by hand that is not the study's parent's is another run: it gets
its own id and folder, never the study's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from xattn_ray.engine.train import Reporter, TrainConfig
from xattn_ray.errors import XattnError
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


def unfinished_parent(storage: Path, experiment: Experiment, spec: RunSpec) -> str | None:
    """Why the run `spec` cannot start yet: its parent has no successful result (it never ran, was
    interrupted or failed). None when it can, or when it starts from scratch. A parent without a result
    may still replace its best checkpoint, so nothing starts from it."""
    parent = parent_spec(experiment, spec)
    if parent is None:
        return None
    result = run_folder(storage, experiment, parent).result()
    if result is not None and result.ok:
        return None
    return f"{parent.stage} run {run_id(experiment, parent)} " + ("failed" if result else "has not finished")


# sha256 of checkpoint files by (path, size, mtime): a parent's best.pt is read once per process, not once per child.
_CHECKSUMS: dict[tuple[str, int, int], str] = {}


def checkpoint_sha256(path: Path) -> str:
    """sha256 of a checkpoint file (hex), read in chunks."""
    stat = Path(path).stat()
    key = (str(Path(path).absolute()), stat.st_size, stat.st_mtime_ns)
    if key not in _CHECKSUMS:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
        _CHECKSUMS[key] = digest.hexdigest()
    return _CHECKSUMS[key]


def stale_reason(storage: Path, experiment: Experiment, spec: RunSpec, result: Result) -> str | None:
    """Why the finished run `spec` (its `result`) no longer matches its parent, or None.

    The run recorded the sha256 of the parent checkpoint it started from; a parent retrained since (or
    resumed past that state) has another best checkpoint, and the run's numbers describe a child of a
    model the study no longer has. A result written before runs recorded the hash counts as stale when
    the parent's checkpoint is newer than it.
    """
    parent = parent_spec(experiment, spec)
    checkpoint = run_folder(storage, experiment, parent).best_checkpoint if parent is not None else None
    if checkpoint is None or not checkpoint.is_file():  # nothing to compare with: the parent stage decides
        return None
    if result.parent_checkpoint_sha256 is None:
        result_file = run_folder(storage, experiment, spec).result_file
        if checkpoint.stat().st_mtime <= result_file.stat().st_mtime:
            return None
        return f"stale: its parent {run_id(experiment, parent)} has a newer {checkpoint.name} than its result"
    current = checkpoint_sha256(checkpoint)
    if current == result.parent_checkpoint_sha256:
        return None
    return (f"stale: it started from parent checkpoint sha256 {result.parent_checkpoint_sha256[:12]}, "
            f"but {run_id(experiment, parent)}'s {checkpoint.name} is now {current[:12]}")


def set_aside(storage: Path, experiment: Experiment, spec: RunSpec) -> Path:
    """Move the run's folder, whole, to `<storage>/<experiment>/stale/<run id>.<n>/`, so that the run
    trains afresh in its own folder and nothing the stale run produced is lost. Returns where it went."""
    folder = run_folder(storage, experiment, spec)
    stale = Path(storage) / experiment.name / "stale"
    stale.mkdir(parents=True, exist_ok=True)
    number = 1
    while (stale / f"{folder.run_id}.{number}").exists():
        number += 1
    return folder.path.rename(stale / f"{folder.run_id}.{number}")


def run(experiment: Experiment, spec: RunSpec, storage: Path, parent_checkpoint: Path | None = None,
        reporter: Reporter | None = None, resume: bool = False, wrap_model: ModelWrapper | None = None,
        score_valid: bool = False) -> Result:
    """Train and score one run in this process.

    A run with a parent starts from that parent's best checkpoint under `storage`, which must be a
    finished run's, unless `parent_checkpoint` names another model: a checkpoint that is not the
    parent's makes another run, whose id and folder (`<storage>/<experiment>/from-checkpoint/<run id>-parent-<sha8>/`)
    carry the checkpoint's hash, so it never writes over the study's run.
    """
    storage = Path(storage)
    parent = parent_spec(experiment, spec)
    identifier, folder, checksum = run_id(experiment, spec), run_folder(storage, experiment, spec), None
    if parent is not None:
        waiting = unfinished_parent(storage, experiment, spec)
        if parent_checkpoint is None:
            if waiting:
                raise XattnError(f"run {identifier} cannot start: {waiting}")
            parent_checkpoint = run_folder(storage, experiment, parent).best_checkpoint
        checksum = checkpoint_sha256(parent_checkpoint)
        own = run_folder(storage, experiment, parent).best_checkpoint
        if waiting or not own.is_file() or checkpoint_sha256(own) != checksum:
            identifier = f"{identifier}-parent-{checksum[:8]}"
            folder = RunFolder(storage / experiment.name / "from-checkpoint" / identifier)
    context = RunContext(experiment=experiment, spec=spec, run_id=identifier,
                         config_hash=config_hash(experiment, spec), train_config=train_config(experiment, spec),
                         folder=folder, parent_checkpoint=parent_checkpoint, parent_checkpoint_sha256=checksum,
                         cache=storage / "cache", reporter=reporter, resume=resume, wrap_model=wrap_model,
                         score_valid=score_valid)
    return kind_of(experiment).run(context)
