"""One stage of a study as one Ray Tune run: a trial per run that is not finished yet.

Finished runs are reused (their rows are written again, which replaces them) unless their parent's
checkpoint changed since they started from it: such a stale run's folder is set aside and it trains
again. A run whose parent has no successful result is recorded as failed, waiting on its parent,
without starting. A trial that Tune gives up on (after its retries) is recorded with the root cause of
its error; one a scheduler stopped, or Ctrl-C (`INTERRUPTION`), is recorded as `stopped`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ray import tune
from ray.tune import Stopper

from xattn_ray.runner.local_ray import end_local_ray
from xattn_ray.runner.plan import DRIVER_RESOURCE, ResourcePlan
from xattn_ray.runner.progress import Budget, ProgressTable
from xattn_ray.runner.tracking import tracking_callbacks
from xattn_ray.runner.trial import MAX_FAILURES, TrialContext, run_trial
from xattn_ray.store import ResultsStore
from xattn_ray.study.config import Experiment
from xattn_ray.study.records import outcome_rows, stale_rows, unfinished_rows
from xattn_ray.study.runs import run_folder, run_id, set_aside, stale_reason, train_config, unfinished_parent
from xattn_ray.study.spec import RunSpec

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C
INTERRUPTED = "interrupted by Ctrl-C; --resume continues it from its last checkpoint"


class Interruption(Stopper):
    """Ctrl-C during a study, as a Tune stopper of every stage.

    Tune's own SIGINT handler ends `Tuner.fit()` as if the run were complete, so the study could not
    tell an interruption from the end of a stage (docs/ray-facts.md); the study installs `handle`
    instead (with TUNE_DISABLE_SIGINT_HANDLER=1). The first Ctrl-C makes `stop_all` true: Tune stops
    every trial (each keeps its last checkpoint) and the study starts nothing more. A second Ctrl-C
    exits at once.
    """

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False  # trials stop one by one only by their own stopping rules

    def stop_all(self) -> bool:
        return self.requested

    def handle(self, signum, frame) -> None:
        """The SIGINT handler. It writes with os.write: a signal handler must not re-enter print."""
        if self.requested:
            os.write(2, b"\ninterrupted again: exiting now\n")
            end_local_ray()  # whose agents might otherwise outlive us
            os._exit(EXIT_INTERRUPTED)  # at once: no cleanup that could hang
        self.requested = True
        os.write(2, b"\ninterrupt: stopping the running trials at their last checkpoints; Ctrl-C again "
                    b"to exit at once\n")


INTERRUPTION = Interruption()  # one per process, like the SIGINT handler that sets it


def cluster_resources() -> dict[str, float]:
    """What the connected cluster offers now, in the resources the plan counts."""
    import ray

    return {key: value for key, value in ray.cluster_resources().items() if key in ("CPU", "GPU", DRIVER_RESOURCE)}


def largest_node_cpus() -> float:
    """The CPUs of the connected cluster's largest live node: the most that one trial can hold."""
    import ray

    return max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]), default=0.0)


def runnable(experiment: Experiment, spec: RunSpec, storage: Path, store: ResultsStore,
             unfinished: dict[str, str], selection: str = "grid") -> bool:
    """Whether the run `spec` may start: its parent (if any) has a successful result in its folder.
    If not, it is recorded as failed, waiting on its parent, and does not start."""
    waiting = unfinished_parent(storage, experiment, spec)
    if waiting is None:
        return True
    why = f"waiting on its parent: {waiting}"
    unfinished[run_id(experiment, spec)] = why
    store.write(unfinished_rows(experiment, spec, "failed", why, selection=selection))
    return False


def run_stage(stage: str, experiment: Experiment, specs: list[RunSpec], storage: Path, store: ResultsStore,
              plan: ResourcePlan, progress_interval: float, unfinished: dict[str, str],
              selection: str = "grid") -> None:
    """One Tune run over the runnable `specs`, skipping finished runs (whose rows are written again, as
    `selection`: a search's best trial becomes its cell's confirmed run at its seed)."""
    pending, reused = [], 0
    for spec in specs:
        result = run_folder(storage, experiment, spec).result()
        if result is not None and (why := stale_reason(storage, experiment, spec, result)):
            store.write(stale_rows(experiment, spec, result, why, selection))
            moved = set_aside(storage, experiment, spec)
            print(f"[{stage}] {run_id(experiment, spec)}: {why}; it trains again (earlier files: {moved})",
                  flush=True)
            result = None
        if result is not None:
            reused += 1
            store.write(outcome_rows(experiment, spec, result, selection=selection))
            if not result.ok:
                unfinished[run_id(experiment, spec)] = result.stop_reason
        elif runnable(experiment, spec, storage, store, unfinished, selection):
            pending.append(spec)
    print(f"[{stage}] {len(pending)} to train, {reused} finished earlier (reused)", flush=True)
    if pending:
        tune_stage(stage, experiment, {"spec": tune.grid_search([spec.to_dict() for spec in pending])}, storage,
                   store, plan, progress_interval, unfinished, search_alg=None, samples=1, selection=selection)


def tune_stage(stage: str, experiment: Experiment, param_space: dict, storage: Path, store: ResultsStore,
               plan: ResourcePlan, progress_interval: float, unfinished: dict[str, str], search_alg,
               samples: int, scheduler=None, metric: str | None = None, mode: str | None = None,
               selection: str = "grid") -> list:
    """Fit one Tune run; record why trials that did not finish stopped. Returns Tune's results."""
    plan = plan.widened(samples if search_alg is not None else len(param_space["spec"]["grid_search"]),
                        largest_node_cpus())
    context = TrialContext(experiment=experiment, storage=storage, store_uri=store.uri, workers=plan.workers,
                           worker_resources=plan.worker_resources,
                           score_valid=experiment.search is not None and experiment.search.metric == "valid_bleu",
                           selection=selection)
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), plan.trial_resources)

    def trial_name(trial) -> str:
        return run_id(experiment, RunSpec.from_dict(trial.config["spec"]))

    def trial_budget(trial) -> Budget:
        train = train_config(experiment, RunSpec.from_dict(trial.config["spec"]))
        return Budget(train.max_updates, train.max_seconds)

    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=samples, search_alg=search_alg, scheduler=scheduler, metric=metric,
                                    mode=mode, max_concurrent_trials=plan.concurrent,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=stage, storage_path=str(storage / experiment.name / "tune"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                                  stop=INTERRUPTION,
                                  callbacks=[ProgressTable(stage, progress_interval, budget=trial_budget),
                                             *tracking_callbacks(experiment, storage, selection)]))
    results = tuner.fit()
    for result in results:
        spec = RunSpec.from_dict(result.config["spec"])
        if run_folder(storage, experiment, spec).finished:
            continue
        identifier = run_id(experiment, spec)
        if result.error is not None:
            why = root_cause(result.error)
            status = "failed"
            unfinished[identifier] = why
        elif INTERRUPTION.requested:
            why, status = INTERRUPTED, "stopped"
            unfinished[identifier] = why
        else:  # a scheduler (ASHA) ended it: expected, recorded, not a failure of the study
            why = "stopped early by the scheduler"
            status = "stopped"
        store.write(unfinished_rows(experiment, spec, status, why, trial_id(result), selection))
    return list(results)


def trial_id(result) -> str | None:
    metrics = result.metrics or {}
    return metrics.get("trial_id")


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# The line a Python traceback ends with: `ValueError: ...`, `xattn_ray.errors.XattnError: ...`.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b.*")
ERROR_LENGTH = 1000  # a root cause longer than this is cut, with a mark


def root_cause(error: BaseException) -> str:
    """Why a trial failed, in plain text: the exception raised in the trial (`Type: message`), not the
    remote traceback Ray wraps around it, which is coloured and names Ray's frames first."""
    while getattr(error, "cause", None) is not None:  # RayTaskError: the trial's own exception
        error = error.cause
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    # A wrapper whose text is a traceback (Ray Train's TrainingFailedError): its last exception line.
    last = next((line for line in reversed(lines) if _EXCEPTION_LINE.match(line)), None)
    text = last if last is not None and len(lines) > 1 else f"{type(error).__name__}: {' '.join(lines)}"
    return text if len(text) <= ERROR_LENGTH else text[:ERROR_LENGTH - 1] + "…"
