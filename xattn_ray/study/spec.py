"""A run's name: which run of the experiment file, under which policy, seed and grid values.

A `RunSpec` is plain data, so a Ray trial's config carries it as a dict and a restarted study rebuilds
it exactly. What a spec means (its training options, its parent, its hash) is for the study kind to
say (`study.kinds`); `run_label` is the readable half of its run id.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from xattn_ray.study.sweep import TUNABLE_MODEL_FIELDS

# Transfer studies train parents and children; code-switching studies a base model, optionally a
# Q_cross pretraining run, and the code-switched fine-tuning runs.
Stage = Literal["parent", "child", "base", "pretrain", "codeswitch"]


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


@dataclass(frozen=True)
class StagePlan:
    """One stage of a study: runs that may train at once (one Ray Tune run), after the stages before it."""

    name: str  # parents | pretrain | children
    specs: list[RunSpec]


def model_options(spec: RunSpec) -> dict[str, float]:
    """The dropout options a grid or search sets on the run's model."""
    return {name: value for name, value in spec.options.items() if name in TUNABLE_MODEL_FIELDS}


def run_label(spec: RunSpec) -> str:
    """The readable part of a run id: name, policy, attention and alphas, grid size and options, seed."""
    parts = [spec.run]
    if spec.policy:
        parts.append(spec.policy)
    if spec.attention is not None and spec.stage != "base":  # the one base model needs no variant name
        parts.append(spec.attention + ("" if spec.alphas is None else f"{spec.alphas[0]:g}-{spec.alphas[1]:g}"))
    if spec.size is not None:
        parts.append(f"n{spec.size}")
    parts += [f"{name}{value:.3g}" for name, value in sorted(spec.options.items())]
    parts.append(f"s{spec.seed}")
    return "-".join(parts)
