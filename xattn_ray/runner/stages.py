"""One stage of a study as one Ray Tune run: a trial per run that is not finished yet.

Finished runs are reused, never retrained (their rows are written again, which replaces them); a run
whose parent did not finish is recorded as failed without starting. A trial that Tune gives up on
(after its retries) is recorded with the root cause of its error; one a scheduler stopped is recorded
as `stopped`, which is expected and not a failure of the study.
"""

from __future__ import annotations

from pathlib import Path

from ray import tune

from xattn_ray.runner.plan import ResourcePlan
from xattn_ray.runner.progress import ProgressTable
from xattn_ray.runner.trial import MAX_FAILURES, TrialContext, run_trial
from xattn_ray.store import ResultsStore
from xattn_ray.study.config import Experiment
from xattn_ray.study.records import outcome_rows, unfinished_rows
from xattn_ray.study.runs import parent_spec, run_folder, run_id
from xattn_ray.study.spec import RunSpec


def cluster_resources() -> dict[str, float]:
    import ray

    return {key: value for key, value in ray.cluster_resources().items() if key in ("CPU", "GPU")}


def runnable(experiment: Experiment, spec: RunSpec, store: ResultsStore, unfinished: dict[str, str]) -> bool:
    """Whether the run `spec` starts from finished; if not, it is recorded as failed with the reason."""
    parent = parent_spec(experiment, spec)
    if parent is None or run_id(experiment, parent) not in unfinished:
        return True
    why = f"{parent.stage} run {run_id(experiment, parent)} did not finish"
    unfinished[run_id(experiment, spec)] = why
    store.write(unfinished_rows(experiment, spec, "failed", why))
    return False


def run_stage(stage: str, experiment: Experiment, specs: list[RunSpec], storage: Path, store: ResultsStore,
              plan: ResourcePlan, progress_interval: float, unfinished: dict[str, str]) -> None:
    """One Tune run over the runnable `specs`, skipping finished runs (whose rows are written again)."""
    pending = []
    specs = [spec for spec in specs if runnable(experiment, spec, store, unfinished)]
    for spec in specs:
        result = run_folder(storage, experiment, spec).result()
        if result is None:
            pending.append(spec)
        else:
            store.write(outcome_rows(experiment, spec, result))
            if not result.ok:
                unfinished[run_id(experiment, spec)] = result.stop_reason
    reused = len(specs) - len(pending)
    print(f"[{stage}] {len(pending)} to train, {reused} finished earlier (reused)", flush=True)
    if pending:
        tune_stage(stage, experiment, {"spec": tune.grid_search([spec.to_dict() for spec in pending])}, storage,
                   store, plan, progress_interval, unfinished, search_alg=None, samples=1)


def tune_stage(stage: str, experiment: Experiment, param_space: dict, storage: Path, store: ResultsStore,
               plan: ResourcePlan, progress_interval: float, unfinished: dict[str, str], search_alg,
               samples: int, scheduler=None, metric: str | None = None, mode: str | None = None) -> list:
    """Fit one Tune run; record why trials that did not finish stopped. Returns Tune's results."""
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
        if run_folder(storage, experiment, spec).finished:
            continue
        identifier = run_id(experiment, spec)
        if result.error is not None:
            why = one_line(result.error)
            status = "failed"
            unfinished[identifier] = why
        else:  # a scheduler (ASHA) ended it: expected, recorded, not a failure of the study
            why = "stopped early by the scheduler"
            status = "stopped"
        store.write(unfinished_rows(experiment, spec, status, why, trial_id(result)))
    return list(results)


def trial_id(result) -> str | None:
    metrics = result.metrics or {}
    return metrics.get("trial_id")


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:500]
