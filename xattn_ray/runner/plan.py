"""What a study will run, worked out before Ray starts: the trials of each stage and the resource plan.

Plain Python, no Ray: `xattn-ray validate` prints the plan, tests check it in milliseconds.

- Parents: one trial per parent run (its own `seed`); a code-switching study: its base model, then one
  Q_cross pretraining run per grid alphas when it has `pretrain`.
- Children: every combination of child x policy x size x grid option values x seed (the grid's cells).
  With a `search` section, each cell is searched on its own: an Optuna search draws `samples` values
  of the search space for it (Optuna cannot search across grid axes).
- Resources: a one-worker trial runs the training loop in its own process and takes the worker's
  CPUs/GPUs; a several-worker trial is a driver (1 CPU) plus a Ray Train worker group. The plan never
  asks for more trials at once than the cluster can hold.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from xattn_ray.study.config import Experiment, ResourcesConfig
from xattn_ray.errors import ConfigError
from xattn_ray.study.runs import RunSpec, codeswitch_base_spec


def parent_specs(experiment: Experiment) -> list[RunSpec]:
    """The first stage: the parents, or a code-switching study's base model."""
    if experiment.codeswitch is not None:
        return [codeswitch_base_spec(experiment)]
    return [RunSpec("parent", parent.name, parent.seed) for parent in experiment.parents]


def pretrain_specs(experiment: Experiment) -> list[RunSpec]:
    """A code-switching study's Q_cross pretraining runs: one per grid alphas (none without `pretrain`)."""
    study = experiment.codeswitch
    if study is None or study.pretrain is None or "xlquery" not in experiment.grid.attention:
        return []
    return [RunSpec("pretrain", "pretrain", study.seed, attention="xlquery", alphas=tuple(alphas))
            for alphas in experiment.grid.alphas]


def child_specs(experiment: Experiment) -> list[RunSpec]:
    """Every child run of the grid: child x policy x size x grid options x seed (seeds innermost).

    A code-switching study's fine-tuning runs instead: policy x attention (x alphas for xlquery) x grid
    options x seed.
    """
    grid = experiment.grid
    names = sorted(grid.options)
    specs = []
    if experiment.codeswitch is not None:
        for policy in grid.policies:
            for attention in grid.attention:
                for alphas in grid.alphas if attention == "xlquery" else [None]:
                    for values in itertools.product(*(grid.options[name] for name in names)):
                        specs += [RunSpec("codeswitch", "cs", seed, policy, None, dict(zip(names, values)), attention,
                                          None if alphas is None else tuple(alphas))
                                  for seed in grid.seeds]
        return specs
    for child in experiment.children:
        for policy in grid.policies:
            for size in grid.sizes or [None]:
                for values in itertools.product(*(grid.options[name] for name in names)):
                    specs += [RunSpec("child", child.run_name, seed, policy, size, dict(zip(names, values)))
                              for seed in grid.seeds]
    return specs


@dataclass(frozen=True)
class ResourcePlan:
    """How much one trial takes and how many trials run at once."""

    workers: int
    worker_resources: dict[str, float]  # per Ray Train worker (several-worker runs)
    trial_resources: dict[str, float]  # what Tune reserves for the trial itself
    concurrent: int  # trials at once

    def per_trial(self) -> dict[str, float]:
        """Everything one trial holds while it trains."""
        if self.workers == 1:
            return dict(self.trial_resources)
        total = dict(self.trial_resources)
        for key, value in self.worker_resources.items():
            total[key] = total.get(key, 0) + value * self.workers
        return total

    def widened(self, trials: int, cluster: dict[str, float]) -> ResourcePlan:
        """When a stage has fewer one-worker trials than fit at once (a lone parent), give each trial the
        CPUs the others would have used: its training loop runs with that many threads."""
        if self.workers > 1 or trials >= self.concurrent or "GPU" in self.worker_resources:
            return self
        cpus = float(max(self.worker_resources["CPU"], math.floor(cluster.get("CPU", 0) / max(trials, 1))))
        resources = {**self.worker_resources, "CPU": cpus}
        return ResourcePlan(self.workers, resources, dict(resources), max(1, trials))

    def describe(self, cluster: dict[str, float]) -> str:
        held = ", ".join(f"{value:g} {key}" for key, value in self.per_trial().items() if value)
        how = "in the trial's process" if self.workers == 1 else f"{self.workers} Ray Train workers (DDP)"
        available = ", ".join(f"{cluster.get(key, 0):g} {key}" for key in ("CPU", "GPU") if cluster.get(key))
        return f"each run: {how}, holding {held}; {self.concurrent} at once on {available}"


def plan_resources(resources: ResourcesConfig, cluster: dict[str, float], autoscaling: bool = False) -> ResourcePlan:
    """The plan for `resources` on a cluster offering `cluster` (e.g. {"CPU": 2, "GPU": 0}).

    One trial that needs more than the cluster has is an error, unless the cluster autoscales (it may
    add nodes once the trials ask for them).
    """
    worker = {"CPU": float(resources.cpus_per_worker)}
    if resources.gpus_per_worker:
        worker["GPU"] = resources.gpus_per_worker
    # A Tune trial may not ask for zero resources, and fractional CPUs for drivers add up until
    # nothing fits (DESIGN.md): a several-worker trial's driver holds one whole CPU.
    trial = dict(worker) if resources.workers == 1 else {"CPU": 1.0}
    plan = ResourcePlan(resources.workers, worker, trial, 1)
    need = plan.per_trial()
    fits = []
    for key, amount in need.items():
        have = cluster.get(key, 0.0)
        if amount > have and not autoscaling:
            raise ConfigError(f"resources: one run needs {amount:g} {key} but the cluster has {have:g} "
                              f"(lower resources.workers / cpus_per_worker / gpus_per_worker)")
        fits.append(math.floor(have / amount + 1e-9) if amount else math.inf)
    concurrent = max(1, min(fits)) if fits else 1
    if resources.max_concurrent is not None:
        concurrent = min(concurrent, resources.max_concurrent)
    return ResourcePlan(resources.workers, worker, trial, concurrent)
