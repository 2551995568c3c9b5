"""What identifies a run of a study: its spec, the hash of everything it depends on, its id and folder.

A `RunSpec` names one run: a parent, or a child under a policy, with the grid's seed, training size and
option values. Its config hash covers every setting that changes what the run computes (data slice,
corpus, filters, tokenizer, model, training and evaluation options, policy, seed) and, for a child,
its parent's hash. The run id puts a readable label before that hash, so

    quickstart/runs/lb-pv-xattn-s1-3f2a9c01/

is the same folder for the same run in every invocation (a restarted study resumes in place), and a
changed setting gives a new folder instead of silently reusing a stale checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from xattn_ray.study.config import (ChildConfig, Experiment, ParentConfig, TUNABLE_MODEL_FIELDS, apply_options)
from xattn_ray.errors import ConfigError
from xattn_ray.engine.train import TrainConfig

# Transfer studies train parents and children; code-switching studies (config.CodeSwitchStudy) a base
# model, optionally a Q_cross pretraining run, and the code-switched fine-tuning runs.
Stage = Literal["parent", "child", "base", "pretrain", "codeswitch"]
CODESWITCH_STAGES = ("base", "pretrain", "codeswitch")


@dataclass(frozen=True)
class RunSpec:
    """One run: `run` is a parent's or child's name in the experiment file (or the code-switching stage)."""

    stage: Stage
    run: str
    seed: int
    policy: str | None = None  # children and code-switched fine-tuning
    size: int | None = None  # a grid size replacing the child's own `size`
    options: dict[str, float] = field(default_factory=dict)  # grid or search values of tunable fields
    attention: str | None = None  # code-switching runs: standard | xlquery
    alphas: tuple[float, float] | None = None  # xlquery runs: training (mono_alpha, cross_alpha)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunSpec:
        alphas = data.get("alphas")
        return cls(**{**data, "alphas": None if alphas is None else tuple(alphas)})


def codeswitch_base_spec(experiment: Experiment) -> RunSpec:
    return RunSpec("base", "base", experiment.codeswitch.seed, attention="standard")


def run_config(experiment: Experiment, spec: RunSpec) -> ParentConfig | ChildConfig:
    """The parent or child section of `spec`, with the grid's size applied (transfer studies)."""
    runs = {p.name: p for p in experiment.parents} if spec.stage == "parent" else \
        {c.run_name: c for c in experiment.children}
    if spec.run not in runs:
        raise ConfigError(f"experiment {experiment.name!r} has no {spec.stage} run named {spec.run!r} "
                          f"({spec.stage} runs: {', '.join(runs) or 'none'})")
    run = runs[spec.run]
    return dataclasses.replace(run, size=spec.size) if spec.size is not None else run


def train_config(experiment: Experiment, spec: RunSpec) -> TrainConfig:
    """The run's training options: the experiment's, then the grid/search options, then the seed."""
    if spec.stage in CODESWITCH_STAGES:
        study = experiment.codeswitch
        base = {"base": study.base_train or experiment.train, "pretrain": study.pretrain,
                "codeswitch": experiment.child_train or experiment.train}[spec.stage]
    else:
        base = experiment.train_config(run_config(experiment, spec))
    return dataclasses.replace(apply_options(base, spec.options), seed=spec.seed)


def model_options(spec: RunSpec) -> dict[str, float]:
    """The dropout options a grid or search sets on the run's model."""
    return {name: value for name, value in spec.options.items() if name in TUNABLE_MODEL_FIELDS}


def parent_spec(experiment: Experiment, spec: RunSpec) -> RunSpec:
    """The run a child (or a code-switching run) starts from: a parent, the base, or Q_cross pretraining."""
    if spec.stage == "pretrain":
        return codeswitch_base_spec(experiment)
    if spec.stage == "codeswitch":
        if spec.attention == "xlquery" and experiment.codeswitch.pretrain is not None:
            return RunSpec("pretrain", "pretrain", experiment.codeswitch.seed, attention="xlquery",
                           alphas=spec.alphas)
        return codeswitch_base_spec(experiment)
    child = run_config(experiment, spec)
    assert isinstance(child, ChildConfig)
    parent = experiment.parent(child.parent)
    return RunSpec("parent", parent.name, parent.seed)


def config_hash(experiment: Experiment, spec: RunSpec) -> str:
    """sha256 over everything the run's result depends on (hex)."""
    if spec.stage in CODESWITCH_STAGES:
        return _codeswitch_hash(experiment, spec)
    run = run_config(experiment, spec)
    corpus_name = run.corpus if isinstance(run, ParentConfig) else experiment.child_corpus(run)
    payload = {
        "stage": spec.stage, "pair": run.pair, "lines": run.lines, "size": run.size,
        "corpus": _resolved_paths(dataclasses.asdict(experiment.corpora[corpus_name]), experiment.base_dir),
        "test_sets": run.test_sets, "filters": dataclasses.asdict(experiment.filters),
        "tokenizer": dataclasses.asdict(experiment.tokenizer), "model": dataclasses.asdict(experiment.model),
        "model_options": model_options(spec), "train": dataclasses.asdict(train_config(experiment, spec)),
        "evaluation": dataclasses.asdict(experiment.evaluation),
    }
    if spec.stage == "child":
        payload["policy"] = {"name": spec.policy, **dataclasses.asdict(experiment.policy(spec.policy))}
        payload["parent"] = config_hash(experiment, parent_spec(experiment, spec))
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _codeswitch_hash(experiment: Experiment, spec: RunSpec) -> str:
    study = experiment.codeswitch
    examples = {key: value for key, value in dataclasses.asdict(study).items() if key not in ("base_train", "pretrain")}
    payload = {
        "stage": spec.stage, "codeswitch": examples, "attention": spec.attention, "alphas": spec.alphas,
        "corpus": _resolved_paths(dataclasses.asdict(experiment.corpora[study.corpus]), experiment.base_dir),
        "filters": dataclasses.asdict(experiment.filters), "tokenizer": dataclasses.asdict(experiment.tokenizer),
        "model": dataclasses.asdict(experiment.model), "model_options": model_options(spec),
        "train": dataclasses.asdict(train_config(experiment, spec)),
        "evaluation": dataclasses.asdict(experiment.evaluation),
    }
    if spec.stage == "codeswitch":
        payload["policy"] = {"name": spec.policy, **dataclasses.asdict(experiment.policy(spec.policy))}
    if spec.stage != "base":
        payload["parent"] = config_hash(experiment, parent_spec(experiment, spec))
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _resolved_paths(corpus: dict, base_dir: Path) -> dict:
    """The corpus section with every file path absolute: moving the experiment file alone changes no
    hash, pointing it at other data does."""

    def resolve(files):
        if isinstance(files, str):
            return os.path.normpath(base_dir / files)
        if isinstance(files, dict):
            return {key: resolve(value) for key, value in files.items()}
        return files

    return {key: resolve(value) if key in ("train", "valid", "test") else value for key, value in corpus.items()}


def run_label(spec: RunSpec) -> str:
    """The readable part of a run id: name, policy, attention and alphas, grid size and options, seed."""
    parts = [spec.run]
    if spec.policy:
        parts.append(spec.policy)
    if spec.stage in ("pretrain", "codeswitch"):
        parts.append(spec.attention + ("" if spec.alphas is None else f"{spec.alphas[0]:g}-{spec.alphas[1]:g}"))
    if spec.size is not None:
        parts.append(f"n{spec.size}")
    parts += [f"{name}{value:.3g}" for name, value in sorted(spec.options.items())]
    parts.append(f"s{spec.seed}")
    return "-".join(parts)


def run_id(experiment: Experiment, spec: RunSpec) -> str:
    """Stable id of a run: its label and the first 8 hex digits of its config hash."""
    return f"{run_label(spec)}-{config_hash(experiment, spec)[:8]}"


def run_directory(storage: Path, experiment: Experiment, spec: RunSpec) -> Path:
    """Where a run keeps its checkpoints, translations and `result.json`."""
    return Path(storage) / experiment.name / "runs" / run_id(experiment, spec)
