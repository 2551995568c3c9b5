"""A whole study on Ray: parents, then children, each stage one Ray Tune run whose trials are its runs.

    run_study(experiment, storage, store_uri)
      1. connect to Ray (a local instance unless an address is given) and plan resources;
      2. parents:  trials for parent runs that have no finished result yet;
      3. children: trials for the grid's child runs (or one Optuna search per grid cell), each starting
                   from its parent's best checkpoint;
      4. write the rows of reused runs again (idempotent) and print BLEU by pair and policy.

A run is finished when its folder holds `result.json` (written last by the pipeline). Finished runs
are reused, never retrained: adding a policy or a seed to a finished study trains only what is new.
A run with checkpoints but no result was interrupted; `resume=True` continues it from `last.pt`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from xattn_ray.config import Experiment
from xattn_ray.errors import XattnError
from xattn_ray.pipeline import read_summary
from xattn_ray.runner.plan import ResourcePlan, child_specs, parent_specs, plan_resources
from xattn_ray.runner.records import outcome_rows, unfinished_rows
from xattn_ray.runs import RunSpec, parent_spec, run_directory, run_id
from xattn_ray.store import ResultsStore

log = logging.getLogger(__name__)

# Tune's trial folders are named by the run, and trials read their data by absolute paths: Tune must
# not change the working directory (DESIGN.md), locally or on a cluster's workers.
RAY_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0"}


@dataclass(frozen=True)
class StudyResult:
    """What a study ended with: the summaries of every run, by run id, and those that did not finish."""

    summaries: dict[str, dict]
    unfinished: dict[str, str]  # run id -> why


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address`, or start a local Ray instance (the embedded default)."""
    import ray

    os.environ.update(RAY_ENV)
    if ray.is_initialized():
        return
    # Trials log to files in Ray's session folder; the terminal shows the progress table. The dashboard
    # stays on: Ray Train's placement-group cleaner needs its State API, or finished trials' placement
    # groups leak and a grid on a small machine hangs (DESIGN.md).
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    if address:
        ray.init(address=address, runtime_env={"env_vars": RAY_ENV}, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, runtime_env={"env_vars": RAY_ENV}, log_to_driver=False)


def cluster_resources() -> dict[str, float]:
    import ray

    return {key: value for key, value in ray.cluster_resources().items() if key in ("CPU", "GPU")}


def run_study(experiment: Experiment, storage: Path, store_uri: str, resume: bool = False,
              address: str | None = None, num_cpus: int | None = None,
              progress_interval: float = 30.0) -> StudyResult:
    """Run every stage of `experiment`; results go to `store_uri`, run folders under `storage`."""
    storage = Path(storage).absolute()
    parents = parent_specs(experiment)
    children = child_specs(experiment) if experiment.search is None else []
    _refuse_unfinished(experiment, storage, parents + children, resume)
    connect(address, num_cpus)
    plan = plan_resources(experiment.resources, cluster_resources(), autoscaling=address is not None)
    log.info("%s", plan.describe(cluster_resources()))
    store = ResultsStore(store_uri)
    unfinished: dict[str, str] = {}

    _run_stage("parents", experiment, parents, storage, store, plan, progress_interval, unfinished)
    failed_parents = {spec.run for spec in parents if run_id(experiment, spec) in unfinished}
    if experiment.search is None:
        runnable = []
        for spec in children:
            parent = parent_spec(experiment, spec)
            if parent.run in failed_parents:
                unfinished[run_id(experiment, spec)] = f"parent {parent.run} did not finish"
                store.write(unfinished_rows(experiment, spec, "failed", f"parent {parent.run} did not finish"))
            else:
                runnable.append(spec)
        _run_stage("children", experiment, runnable, storage, store, plan, progress_interval, unfinished)
    else:
        from xattn_ray.runner.sweep import run_search

        run_search(experiment, storage, store, plan, progress_interval, unfinished, failed_parents)
    summaries = {}
    for spec in _all_specs(experiment, storage):
        summary = read_summary(run_directory(storage, experiment, spec))
        if summary is not None:
            summaries[run_id(experiment, spec)] = summary
    return StudyResult(summaries, unfinished)


def _all_specs(experiment: Experiment, storage: Path) -> list[RunSpec]:
    """Every run the study knows of: the grid's, and those a search created (found by their folders)."""
    specs = parent_specs(experiment) + child_specs(experiment)
    if experiment.search is not None:
        from xattn_ray.runner.sweep import searched_specs

        specs = parent_specs(experiment) + searched_specs(experiment, storage)
    return specs


def _refuse_unfinished(experiment: Experiment, storage: Path, specs: list[RunSpec], resume: bool) -> None:
    """Without `resume`, a run interrupted by an earlier invocation is an error, not silently continued."""
    if resume:
        return
    interrupted = [run_id(experiment, spec) for spec in specs
                   if (run_directory(storage, experiment, spec) / "last.pt").is_file()
                   and read_summary(run_directory(storage, experiment, spec)) is None]
    if interrupted:
        raise XattnError(f"{len(interrupted)} run(s) of study {experiment.name!r} were interrupted "
                         f"(e.g. {interrupted[0]} in {storage / experiment.name / 'runs'}): add --resume to "
                         f"continue them from their last checkpoints")


def _run_stage(stage: str, experiment: Experiment, specs: list[RunSpec], storage: Path, store: ResultsStore,
               plan: ResourcePlan, progress_interval: float, unfinished: dict[str, str]) -> None:
    """One Tune run over `specs`, skipping finished runs (whose rows are written again instead)."""
    pending = []
    for spec in specs:
        summary = read_summary(run_directory(storage, experiment, spec))
        if summary is None:
            pending.append(spec)
        else:
            store.write(outcome_rows(experiment, spec, summary))
            if summary["status"] != "ok":
                unfinished[run_id(experiment, spec)] = summary["stop_reason"]
    reused = len(specs) - len(pending)
    print(f"[{stage}] {len(pending)} to train, {reused} finished earlier (reused)", flush=True)
    if pending:
        tune_stage(stage, experiment, {"spec": _grid(pending)}, storage, store, plan, progress_interval,
                   unfinished, search_alg=None, samples=1)


def _grid(specs: list[RunSpec]):
    from ray import tune

    return tune.grid_search([spec.to_dict() for spec in specs])


def tune_stage(stage: str, experiment: Experiment, param_space: dict, storage: Path, store: ResultsStore,
               plan: ResourcePlan, progress_interval: float, unfinished: dict[str, str], search_alg,
               samples: int, scheduler=None, metric: str | None = None, mode: str | None = None) -> list:
    """Fit one Tune run; record why trials that did not finish stopped. Returns Tune's results."""
    from ray import tune

    from xattn_ray.runner.progress import ProgressTable
    from xattn_ray.runner.trainable import MAX_FAILURES, TrialContext, run_trial

    plan = plan.widened(samples if search_alg is not None else len(param_space["spec"]["grid_search"]),
                        cluster_resources())
    context = TrialContext(experiment=experiment, storage=storage, store_uri=store.uri, workers=plan.workers,
                           worker_resources=plan.worker_resources,
                           score_valid=experiment.search is not None and experiment.search.metric == "valid_bleu")
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), plan.trial_resources)

    def trial_name(trial) -> str:
        return run_id(experiment, RunSpec.from_dict(trial.config["spec"]))

    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=samples, search_alg=search_alg, scheduler=scheduler, metric=metric,
                                    mode=mode, max_concurrent_trials=plan.concurrent,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=stage, storage_path=str(storage / experiment.name / "tune"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                                  callbacks=[ProgressTable(stage, progress_interval)]))
    results = tuner.fit()
    for result in results:
        spec = RunSpec.from_dict(result.config["spec"])
        if read_summary(run_directory(storage, experiment, spec)) is not None:
            continue
        identifier = run_id(experiment, spec)
        if result.error is not None:
            why = _one_line(result.error)
            status = "failed"
        else:
            why = "stopped early by the scheduler"
            status = "stopped"
        unfinished[identifier] = why
        store.write(unfinished_rows(experiment, spec, status, why, _trial_id(result)))
    return list(results)


def _trial_id(result) -> str | None:
    metrics = result.metrics or {}
    return metrics.get("trial_id")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:500]


def format_summary(result: StudyResult) -> str:
    """BLEU on each run's first test set, mean over seeds: a row per policy, a column per pair."""
    cells: dict[tuple[str, str], list[float]] = {}
    pairs: list[str] = []
    for summary in result.summaries.values():
        if summary["status"] != "ok" or not summary["tests"]:
            continue
        policy = summary["spec"]["policy"] or "(parent)"
        label = summary["pair"] + "".join(f" {k}={v:.3g}" for k, v in sorted(summary["spec"]["options"].items()))
        if summary["spec"]["size"] is not None:
            label += f" n={summary['spec']['size']}"
        if label not in pairs:
            pairs.append(label)
        first = next(iter(summary["tests"].values()))
        cells.setdefault((policy, label), []).append(first["bleu"])
    policies = sorted({policy for policy, _ in cells}, key=lambda p: (p != "(parent)", p))
    width = max([len(p) for p in pairs] + [8])
    lines = ["BLEU (first test set; mean over seeds, n = seeds)",
             f"{'policy':<10} " + " ".join(f"{pair:>{width}}" for pair in pairs)]
    for policy in policies:
        row = []
        for pair in pairs:
            scores = cells.get((policy, pair))
            row.append(f"{sum(scores) / len(scores):>{width - 4}.2f} n={len(scores)}" if scores else f"{'':>{width}}")
        lines.append(f"{policy:<10} " + " ".join(row))
    for identifier, why in sorted(result.unfinished.items()):
        lines.append(f"not finished: {identifier}: {why}")
    return "\n".join(lines)
