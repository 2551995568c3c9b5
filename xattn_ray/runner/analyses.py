"""The analyses stage: one Ray Tune trial per analysis task not done yet (`study.analyses`).

A task is done once its rows are stored and its marker written in the analysed run's folder, so a
re-run study skips it, and retraining that run (its folder deleted) also forgets its analyses.
"""

from __future__ import annotations

import json
from pathlib import Path

import ray
import torch
from ray import tune

from xattn_ray.runner.progress import ProgressTable
from xattn_ray.runner.stages import INTERRUPTION, cluster_resources, root_cause
from xattn_ray.runner.trial import TrialContext
from xattn_ray.store import ResultsStore, make_row
from xattn_ray.study.analyses import AnalysisTask, analysis_tasks, run_task, task_fields, task_id, task_marker
from xattn_ray.study.config import Experiment
from xattn_ray.study.runs import run_folder
from xattn_ray.study.spec import RunSpec


def run_analyses(experiment: Experiment, specs: list[RunSpec], storage: Path, store: ResultsStore,
                 progress_interval: float, unfinished: dict[str, str], selection: str = "grid",
                 autoscaling: bool = False) -> None:
    """The tasks the experiment asks for over its finished runs among `specs` (of one `selection`), as one
    Tune run: as many at once as the cluster has CPUs, or all submitted on a cluster that grows."""
    finished = [spec for spec in specs if (result := run_folder(storage, experiment, spec).result()) and result.ok]
    tasks = analysis_tasks(experiment, finished, selection)
    if not tasks:
        return
    pending = [task for task in tasks if not task_marker(storage, experiment, task).is_file()]
    print(f"[analyses] {len(pending)} to run, {len(tasks) - len(pending)} done earlier", flush=True)
    if not pending:
        return
    cpus = {"CPU": 1.0}  # decoding a test set: one CPU each
    at_once = None if autoscaling else max(1, int(cluster_resources().get("CPU", 1)))
    context = TrialContext(experiment=experiment, storage=storage, store_uri=store.uri, workers=1,
                           worker_resources=cpus, score_valid=False, selection=selection)

    def trial_name(trial) -> str:
        return task_id(experiment, AnalysisTask.from_dict(trial.config["task"]))

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_analysis_trial, context=context), cpus),
        param_space={"task": tune.grid_search([task.to_dict() for task in pending])},
        tune_config=tune.TuneConfig(max_concurrent_trials=at_once,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name="analyses", storage_path=str(storage / experiment.name / "tune"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1), stop=INTERRUPTION,
                                  callbacks=[ProgressTable("analyses", progress_interval)]))
    for result in tuner.fit():
        task = AnalysisTask.from_dict(result.config["task"])
        if result.error is not None:
            why = root_cause(result.error)
            unfinished[task_id(experiment, task)] = why
            store.write([make_row(**task_fields(experiment, task), eval=task.kind, status="failed", error=why)])


def run_analysis_trial(config: dict, context: TrialContext) -> None:
    """The Tune function of the analyses stage: one task, its rows to the store, a marker when done."""
    torch.set_num_threads(int(context.worker_resources.get("CPU", 1)))
    task = AnalysisTask.from_dict(config["task"])
    rows = run_task(context.experiment, task, context.storage)
    ResultsStore(context.store_uri).write(rows)
    marker = task_marker(context.storage, context.experiment, task)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"rows": len(rows)}) + "\n")
    ray.tune.report({"finished": True, "rows": len(rows)})
