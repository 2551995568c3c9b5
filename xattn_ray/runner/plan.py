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


DRIVER_RESOURCE = "xattn_driver"  # a custom resource cluster.yaml gives to non-spot nodes, the head included


@dataclass(frozen=True)
class ResourcePlan:
    """How much one trial takes and how many trials run at once."""

    workers: int
    worker_resources: dict[str, float]  # per Ray Train worker (several-worker runs)
    trial_resources: dict[str, float]  # what Tune reserves for the trial itself
    concurrent: int | None  # trials at once; None: every trial is submitted, Tune queues what does not fit

    def per_trial(self) -> dict[str, float]:
        """Everything one trial holds while it trains."""
        if self.workers == 1:
            return dict(self.trial_resources)
        total = dict(self.trial_resources)
        for key, value in self.worker_resources.items():
            total[key] = total.get(key, 0) + value * self.workers
        return total

    def widened(self, trials: int, largest_node_cpus: float) -> ResourcePlan:
        """When a stage has fewer one-worker trials than fit at once (a lone parent), give each trial the
        CPUs the others would have used, within one node (a request never spans nodes): its training
        loop runs with that many threads. Not on a growing cluster, whose nodes are still to come."""
        if (self.workers > 1 or self.concurrent is None or trials >= self.concurrent
                or "GPU" in self.worker_resources):
            return self
        cpus = float(max(self.worker_resources["CPU"], math.floor(largest_node_cpus / max(trials, 1))))
        resources = {**self.worker_resources, "CPU": cpus}
        return ResourcePlan(self.workers, resources, dict(resources), max(1, trials))

    def describe(self, cluster: dict[str, float]) -> str:
        held = ", ".join(f"{value:g} {key}" for key, value in self.per_trial().items() if value)
        how = "in the trial's process" if self.workers == 1 else f"{self.workers} Ray Train workers (DDP)"
        available = ", ".join(f"{cluster.get(key, 0):g} {key}" for key in ("CPU", "GPU") if cluster.get(key))
        at_once = (f"{self.concurrent} at once" if self.concurrent is not None
                   else "every run submitted at once, each starting as the cluster grows to fit it")
        return f"each run: {how}, holding {held}; {at_once} on {available or 'no CPU yet'}"


def plan_resources(resources: ResourcesConfig, cluster: dict[str, float], autoscaling: bool = False) -> ResourcePlan:
    """The plan for `resources` on a cluster offering `cluster` now (e.g. {"CPU": 2, "GPU": 0}).

    A fixed cluster runs as many trials at once as fit in it. On a cluster that autoscales, what it has
    now says nothing of what it can grow to: every trial is submitted, and the pending ones are the
    demand that makes the autoscaler add nodes. `resources.max_concurrent`, when given, is the number of
    trials at once in both cases. One trial that needs more than a fixed cluster has is an error.
    """
    worker = {"CPU": float(resources.cpus_per_worker)}
    if resources.gpus_per_worker:
        worker["GPU"] = resources.gpus_per_worker
    plan = ResourcePlan(resources.workers, worker, trial_resources(resources, worker, cluster), 1)
    need = plan.per_trial()
    fits = []
    for key, amount in need.items():
        have = cluster.get(key, 0.0)
        if amount > have and not autoscaling:
            raise ConfigError(f"resources: one run needs {amount:g} {key} but the cluster has {have:g} "
                              f"(lower resources.workers / cpus_per_worker / gpus_per_worker)")
        fits.append(math.floor(have / amount + 1e-9))
    concurrent: int | None = max(1, min(fits)) if not autoscaling else None
    if resources.max_concurrent is not None:
        concurrent = resources.max_concurrent
        if resources.workers > 1 and not autoscaling and DRIVER_RESOURCE not in plan.trial_resources:
            # Drivers beyond what fits would hold the CPUs their own workers wait for: a deadlock.
            concurrent = min(concurrent, max(1, min(fits)))
    return ResourcePlan(resources.workers, worker, plan.trial_resources, concurrent)


def trial_resources(resources: ResourcesConfig, worker: dict[str, float], cluster: dict[str, float]) -> dict[str, float]:
    """What Tune reserves for one trial.

    A one-worker trial trains in its own process, so it holds its worker's resources. A several-worker
    trial's process is a driver that starts a Ray Train worker group, which asks for its resources
    apart from Tune. The driver holds one whole CPU: a Tune trial may not ask for nothing, and
    fractional CPUs for drivers add up until nothing fits (docs/ray-facts.md, "No zero-resource trials"
    and "Whole CPUs"). Where the cluster offers `DRIVER_RESOURCE`, the driver holds one unit of it
    instead: it then runs on a non-spot node (its loss would end the run) and takes no CPU from the
    workers.
    """
    if resources.workers == 1:
        return dict(worker)
    if cluster.get(DRIVER_RESOURCE, 0) > 0:
        return {DRIVER_RESOURCE: 1.0}
    return {"CPU": 1.0}


def nodes_at_max_size(launcher_config: dict, source: str) -> dict[str, list[dict[str, float]]]:
    """The nodes of a Ray cluster launcher config (`cluster.yaml`) grown as far as it may, by node type.

    The head counts once; each worker type counts its `max_workers`, and the config's own `max_workers`
    caps the worker nodes of all types together, spent on the types that hold the most CPUs and GPUs
    first. Each type must state its `resources` (the launcher can detect them on AWS, but a plan made
    here cannot).
    """
    try:
        types = launcher_config["available_node_types"]
        head = launcher_config["head_node_type"]
        nodes = {head: [_node_resources(types[head], head, source)]}
        budget = int(launcher_config.get("max_workers", sum(int(t.get("max_workers", 0)) for t in types.values())))
        workers = {name: _node_resources(spec, name, source) for name, spec in types.items() if name != head}
        for name in sorted(workers, key=lambda n: (-workers[n].get("GPU", 0), -workers[n].get("CPU", 0))):
            count = min(int(types[name].get("max_workers", 0)), budget)
            nodes[name] = [workers[name]] * count
            budget -= count
        return nodes
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{source}: not a Ray cluster launcher config ({type(err).__name__}: {err})") from None


def _node_resources(spec: dict, name: str, source: str) -> dict[str, float]:
    if "resources" not in spec:
        raise ConfigError(f"{source}: available_node_types.{name}.resources: give the node's resources "
                          f"(e.g. {{CPU: 8, GPU: 1}}) so that the plan can count what fits on it")
    return {key: float(value) for key, value in spec["resources"].items()}


def trials_at_once(plan: ResourcePlan, nodes: list[dict[str, float]]) -> int:
    """How many trials of `plan` the fixed set of `nodes` holds at once; a request never spans nodes."""
    def fit(node: dict[str, float], need: dict[str, float]) -> int:
        return min((math.floor(node.get(key, 0.0) / amount + 1e-9) for key, amount in need.items() if amount),
                   default=0)

    if plan.workers == 1:
        total = sum(fit(node, plan.trial_resources) for node in nodes)
    else:
        # Each trial: a driver (on a node with the driver resource, or one CPU) and a group of workers,
        # which Ray Train places across nodes as they fit.
        slots = sum(fit(node, plan.worker_resources) for node in nodes)
        drivers = sum(fit(node, plan.trial_resources) for node in nodes)
        total = min(slots // plan.workers, drivers)
        if DRIVER_RESOURCE not in plan.trial_resources:  # drivers take CPUs the workers could use
            cpus, need = sum(node.get("CPU", 0.0) for node in nodes), plan.per_trial()["CPU"]
            total = min(total, math.floor(cpus / need + 1e-9))
    return total if plan.concurrent is None else min(total, plan.concurrent)
