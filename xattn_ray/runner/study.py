"""A whole study on Ray: its stages in order, each one Ray Tune run whose trials are its runs.

    run_study(experiment, storage, store_uri)
      1. connect to Ray (a local instance unless an address is given) and plan resources;
      2. the study kind's stages in order (transfer: parents, then children; code-switching: base,
         Q_cross pretraining, fine-tuning), each run starting from its parent's best checkpoint;
         with a `search` section, the children stage is one Optuna search per grid cell, then a
         confirmation stage trains each cell's best configuration with every grid seed (runner/search.py);
      3. analyses: forgetting, zero-shot stitching, lexicon induction on the finished children (of a
         search: the confirmed ones);
      4. the finished runs' results, for the summary (rows of reused runs were written again: idempotent).

With a `tracking:` section, each stage's trials are also tracked in MLflow or W&B (runner/tracking.py),
whose store is opened once before anything trains.

A run is finished when its folder holds `result.json` (written last). Finished runs are reused:
adding a policy or a seed to a finished study trains only what is new; only a run whose parent's
checkpoint changed since it started trains again. A run with checkpoints but no result was
interrupted; `resume=True` continues it from its last checkpoint.

Ctrl-C stops every running trial (each keeps its last checkpoint), starts nothing more and ends the
study with `StudyResult.interrupted`; a second Ctrl-C exits at once (`stages.Interruption`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xattn_ray.errors import XattnError
from xattn_ray.report.rows import counted_rows
from xattn_ray.runner.analyses import run_analyses
from xattn_ray.runner.local_ray import start_local_ray
from xattn_ray.runner.plan import ResourcePlan, plan_resources
from xattn_ray.runner.search import (best_trials, confirmation_specs, record_choices, relabel_unchosen,
                                     run_search)
from xattn_ray.runner.stages import INTERRUPTION, cluster_resources, run_stage
from xattn_ray.runner.tracking import open_tracking
from xattn_ray.store import ResultsStore
from xattn_ray.study.config import Experiment
from xattn_ray.study.kinds import kind_of
from xattn_ray.study.run_folder import Result
from xattn_ray.study.runs import all_specs, run_folder, run_id
from xattn_ray.study.spec import RunSpec

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)

# Tune's trial folders are named by the run, and trials read their data by absolute paths: Tune must
# not change the working directory, locally or on a cluster's workers (docs/ray-facts.md, "Working directory").
RAY_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0"}


@dataclass(frozen=True)
class StudyResult:
    """What a study ended with: the results of every finished run, by run id, and those that did not finish."""

    experiment: Experiment
    results: dict[str, Result]
    unfinished: dict[str, str]  # run id (or analysis task id) -> why
    analyses: list[dict]  # the study's analysis rows from the results store
    interrupted: bool = False  # Ctrl-C ended it: runs left in `unfinished` continue with --resume
    rows: pandas.DataFrame | None = None  # the study's counted rows in the results store (report.rows.counted_rows)
    store: ResultsStore | None = None  # where the rows are, and the texts they name


NOT_STARTED = "not started: the study was interrupted"


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address`, or start a local Ray instance (the embedded default: on 127.0.0.1
    only, with token authentication; runner/local_ray.py)."""
    import ray

    os.environ.update(RAY_ENV)
    if ray.is_initialized():
        return
    # Trials log to files in Ray's session folder; the terminal shows the progress table. The dashboard
    # stays on: Ray Train's placement-group cleaner needs its State API, or finished trials' placement
    # groups leak and a grid on a small machine hangs (docs/ray-facts.md, "ray[default] and leaked placement groups").
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    if address:
        ray.init(address=address, runtime_env={"env_vars": RAY_ENV}, log_to_driver=False)
    else:
        start_local_ray(num_cpus, runtime_env={"env_vars": RAY_ENV})  # on 127.0.0.1, with token authentication


def run_study(experiment: Experiment, storage: Path, store_uri: str, resume: bool = False,
              address: str | None = None, num_cpus: int | None = None,
              progress_interval: float = 30.0) -> StudyResult:
    """Run every stage of `experiment`; results go to `store_uri`, run folders under `storage`."""
    storage = Path(storage).absolute()
    stages = kind_of(experiment).stages(experiment)
    if experiment.search is not None:  # the children are the search's to create
        stages = [stage for stage in stages if stage.name != "children"]
    _refuse_unfinished(experiment, storage, [spec for stage in stages for spec in stage.specs], resume)
    store = ResultsStore(store_uri)
    open_tracking(experiment, storage)
    unfinished: dict[str, str] = {}
    with _interruptible():
        connect(address, num_cpus)
        plan = plan_resources(experiment.resources, cluster_resources(), autoscaling=address is not None)
        log.info("%s", plan.describe(cluster_resources()))
        # After Ctrl-C no stage starts: a stage's runs start from the runs of the stages before it.
        for stage in stages:
            if stage.specs and not INTERRUPTION.requested:
                run_stage(stage.name, experiment, stage.specs, storage, store, plan, progress_interval, unfinished)
        selection = "grid"
        if experiment.search is not None and not INTERRUPTION.requested:
            _tune_then_confirm(experiment, storage, store, plan, progress_interval, unfinished)
            selection = "confirmed"
        if not INTERRUPTION.requested:
            run_analyses(experiment, known_specs(experiment, storage), storage, store, progress_interval, unfinished,
                         selection, autoscaling=address is not None)
        results = {}
        for spec in known_specs(experiment, storage):
            result = run_folder(storage, experiment, spec).result()
            if result is not None:
                results[run_id(experiment, spec)] = result
            elif INTERRUPTION.requested:
                unfinished.setdefault(run_id(experiment, spec), NOT_STARTED)
        rows = counted_rows(store.read(experiment=experiment.name))
        analyses = rows[(rows["stage"] == "analysis") & (rows["status"] == "ok")]
        return StudyResult(experiment, results, unfinished, analyses.to_dict("records"), INTERRUPTION.requested,
                           rows, store)


def _tune_then_confirm(experiment: Experiment, storage: Path, store: ResultsStore, plan: ResourcePlan,
                       progress_interval: float,
                       unfinished: dict[str, str]) -> None:
    """Search each grid cell, choose its best configuration, train it with every grid seed."""
    run_search(experiment, storage, store, plan, progress_interval, unfinished)
    if INTERRUPTION.requested:
        return  # a cell's search may be unfinished: its choice could still change
    best = best_trials(experiment, storage)
    record_choices(experiment, storage, best)
    confirmed = confirmation_specs(experiment, best)
    relabel_unchosen(experiment, storage, store, confirmed)
    run_stage("confirm", experiment, confirmed, storage, store, plan, progress_interval, unfinished, "confirmed")


@contextlib.contextmanager
def _interruptible():
    """Ctrl-C goes to `INTERRUPTION` while the study runs, instead of Tune's handler (which would end a
    stage as if it were complete) or a KeyboardInterrupt (which would leave trials running).

    Once interrupted, the handler stays for the rest of the process: a second Ctrl-C while the study
    writes its summary and Ray shuts down still exits at once, not with a KeyboardInterrupt traceback.
    """
    INTERRUPTION.requested = False
    previous_variable = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    previous_handler = signal.signal(signal.SIGINT, INTERRUPTION.handle)
    try:
        yield
    finally:
        if not INTERRUPTION.requested:
            signal.signal(signal.SIGINT, previous_handler)
        if previous_variable is None:
            del os.environ["TUNE_DISABLE_SIGINT_HANDLER"]
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = previous_variable


def known_specs(experiment: Experiment, storage: Path) -> list[RunSpec]:
    """The runs that count: the grid's, or with a search, its stages before the children and each cell's
    confirmed configuration at every grid seed (the search trials are in the store, labelled `search`)."""
    if experiment.search is None:
        return all_specs(experiment)
    return [spec for stage in kind_of(experiment).stages(experiment) if stage.name != "children"
            for spec in stage.specs] + confirmation_specs(experiment, best_trials(experiment, storage))


def _refuse_unfinished(experiment: Experiment, storage: Path, specs: list[RunSpec], resume: bool) -> None:
    """Without `resume`, a run interrupted by an earlier invocation is an error, not silently continued."""
    if resume:
        return
    interrupted = [run_id(experiment, spec) for spec in specs if run_folder(storage, experiment, spec).interrupted]
    if interrupted:
        raise XattnError(f"{len(interrupted)} run(s) of study {experiment.name!r} were interrupted "
                         f"(e.g. {interrupted[0]} in {storage / experiment.name / 'runs'}): add --resume to "
                         f"continue them from their last checkpoints")
