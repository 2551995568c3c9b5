"""How much each trial of a study holds and how many run at once, worked out before Ray starts.

Plain Python, no Ray: `xattn-ray validate` prints the plan, tests check it in milliseconds. (Which
trials each stage has is the study kind's to say: `study.kinds`.)

A one-worker trial runs the training loop in its own process and takes the worker's CPUs/GPUs; a
several-worker trial is a driver (1 CPU) plus a Ray Train worker group. The plan never asks for more
trials at once than the cluster can hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xattn_ray.errors import ConfigError
from xattn_ray.study.sweep import ResourcesConfig


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
    # nothing fits: a several-worker trial's driver holds one whole CPU (docs/ray-facts.md, "No
    # zero-resource trials" and "Whole CPUs").
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
