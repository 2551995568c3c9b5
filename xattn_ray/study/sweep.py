"""The sweep of a study: which runs a grid and a search make, and what each run may hold while it trains.

`grid:` crosses the children with policies, seeds, training sizes and option values (each combination
is one run); `search:` replaces fixed option values by an Optuna search per grid cell; `resources:`
says what one run takes and how many may train at once. Only the options listed as tunable may vary:
numbers of the children's training options, and the dropouts, which change no architecture.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from xattn_ray.schema import Invalid

MAX_SEED = 2**32  # seeds are in [0, 2**32): the range numpy and Python seed from

# Training options a grid axis or a search space may vary (numbers of the children's `TrainConfig`).
TUNABLE_TRAIN_FIELDS = ("lr", "warmup_updates", "warmup_init_lr", "weight_decay", "label_smoothing", "clip_norm",
                        "max_tokens", "update_freq", "max_updates", "max_epochs", "max_seconds", "patience")
# Model options a child may change without changing the architecture.
TUNABLE_MODEL_FIELDS = ("dropout", "attention_dropout", "activation_dropout")
TUNABLE_FIELDS = TUNABLE_TRAIN_FIELDS + TUNABLE_MODEL_FIELDS


def check_tunable(name: str) -> None:
    if name not in TUNABLE_FIELDS:
        raise Invalid(name, f"not a tunable option (tunable: {', '.join(TUNABLE_FIELDS)})")


def check_seed(seed: int, key: str | tuple) -> None:
    if not 0 <= seed < MAX_SEED:
        raise Invalid(key, f"a seed must be in [0, 2**32), got {seed}")


@dataclass(frozen=True)
class GridConfig:
    """The child runs' grid: every combination of these axes is one run (one Ray Tune trial)."""

    policies: list[str] = field(default_factory=lambda: ["scratch", "body", "xattn", "randxattn"])
    seeds: list[int] = field(default_factory=lambda: [1])
    sizes: list[int] | None = None  # child training sizes (a learning curve); None: each child's own
    options: dict[str, list[float]] = field(default_factory=dict)  # e.g. {lr: [1e-4, 3e-4]}: more axes
    # Code-switching studies only: the encoder's self-attention, and the structured dropout's training
    # alphas [mono_alpha, cross_alpha] of xlquery runs (standard runs have no alphas: one run each).
    attention: list[Literal["standard", "xlquery"]] = field(default_factory=lambda: ["standard"])
    alphas: list[tuple[float, float]] = field(default_factory=lambda: [(0.3, 0.3)])

    def __post_init__(self) -> None:
        for axis in ("policies", "seeds", "attention", "alphas"):
            values = getattr(self, axis)
            if not values:
                raise Invalid(axis, "list at least one value")
            if len(set(values)) != len(values):
                raise Invalid(axis, "lists a value twice")
        for i, (mono, cross) in enumerate(self.alphas):
            if not (0.0 <= mono <= 1.0 and 0.0 <= cross <= 1.0):
                raise Invalid("alphas", f"entry {i}: keep probabilities must be in [0, 1], got [{mono}, {cross}]")
        if self.sizes is not None and (not self.sizes or min(self.sizes) < 1):
            raise Invalid("sizes", "list positive training sizes")
        if self.sizes is not None and len(set(self.sizes)) != len(self.sizes):
            raise Invalid("sizes", "lists a value twice")  # two identical trials would share one run folder
        for i, seed in enumerate(self.seeds):
            check_seed(seed, ("seeds", i))
        for name, values in self.options.items():
            check_tunable(name)
            if not values:
                raise Invalid(("options", name), "list at least one value")
            if len(set(values)) != len(values):
                raise Invalid(("options", name), "lists a value twice")  # as for sizes: one folder, two trials


@dataclass(frozen=True)
class SearchDomain:
    """One hyperparameter's range, in Ray Tune's vocabulary: exactly one of the fields."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None  # [low, high)
    choice: list[float] | None = None

    def __post_init__(self) -> None:
        given = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]
        if len(given) != 1:
            raise Invalid(None, "give exactly one of uniform, loguniform, randint, choice")
        bounds = self.uniform or self.loguniform or self.randint
        if bounds is not None and not bounds[0] < bounds[1]:
            raise Invalid(given[0], f"expected [low, high] with low < high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise Invalid("loguniform", "bounds must be positive")
        if self.choice is not None and not self.choice:
            raise Invalid("choice", "list at least one value")


@dataclass(frozen=True)
class SearchConfig:
    """A search over child hyperparameters: one Optuna search per grid cell, `samples` trials each."""

    space: dict[str, SearchDomain]
    samples: int = 8  # trials per grid cell
    metric: Literal["valid_loss", "valid_bleu"] = "valid_loss"  # what the search optimises
    scheduler: Literal["none", "asha"] = "none"  # ASHA stops weak trials at validation milestones
    grace_validations: int = 2  # ASHA: validations every trial gets before it can be stopped
    seed: int = 0  # Optuna's sampler seed

    def __post_init__(self) -> None:
        if not self.space:
            raise Invalid("space", "name at least one hyperparameter")
        for name in self.space:
            check_tunable(name)
        if self.samples < 1:
            raise Invalid("samples", "must be at least 1")
        if self.scheduler == "asha" and self.metric != "valid_loss":
            raise Invalid("scheduler", "ASHA compares trials during training, so it needs metric valid_loss")
        if self.grace_validations < 1:
            raise Invalid("grace_validations", "must be at least 1")
        check_seed(self.seed, "seed")


PLACEMENTS = ("pack", "spread")  # Ray's placement-group strategies PACK and SPREAD


@dataclass(frozen=True)
class ResourcesConfig:
    """What one run takes, and how many runs may train at once."""

    workers: int = 1  # more than one: data-parallel training through Ray Train (DDP)
    cpus_per_worker: int = 1  # whole CPUs: fractional trial CPUs can deadlock Ray (docs/ray-facts.md, "Whole CPUs")
    gpus_per_worker: float = 0.0
    max_concurrent: int | None = None  # None: as many as the cluster holds (on a growing cluster: all of them)
    placement: str = "pack"  # a run's workers on as few nodes as fit ("pack") or each on its own node ("spread")

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise Invalid("workers", "must be at least 1")
        if self.cpus_per_worker < 1:
            raise Invalid("cpus_per_worker", "must be at least 1")
        if self.gpus_per_worker < 0:
            raise Invalid("gpus_per_worker", "must not be negative")
        if self.gpus_per_worker > 1 and not self.gpus_per_worker.is_integer():
            raise Invalid("gpus_per_worker", "Ray takes a fraction of one GPU or whole GPUs, "
                                             f"not {self.gpus_per_worker}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise Invalid("max_concurrent", "must be at least 1")
        if self.placement not in PLACEMENTS:
            raise Invalid("placement", f"must be one of {', '.join(PLACEMENTS)}, not {self.placement!r}")
