"""The study's trials in an experiment tracker: Ray Tune's own MLflow and W&B callbacks, told about runs.

Ray's `MLflowLoggerCallback` and `WandbLoggerCallback` already make one tracker run per Tune trial,
named by the trial (here: the run id, `la-pv-s1-24209b1f`), with Tune's config of the trial as its
parameters (`spec/...`: what names the run) and every report as metrics. This module adds what only the
study knows, and nothing else:

  - the run's resolved configuration as parameters: the fields of its results-store rows that are known
    before it trains and its `hparams` (`train/lr`, `model/preset`, ...), the same values the store records;
  - its metrics: each validation's report (train and valid loss, lr, target tokens per second, ...), and
    the trial's final report with BLEU and chrF per test set (`bleu/<test set>`, `chrf/<test set>`).

Tune steps are reports: one per validation, then the final one (the `update` metric gives the update).
The callbacks live on the driver (W&B's in an actor on the driver's node) and only watch: the trials,
their rows and the progress table are the same with tracking or without. A run that Ctrl-C stopped and
`--resume` finished is two trials, so two tracker runs of the same name, the second starting at the
update it resumed from; a run finished earlier is reused, not tracked again. Analyses are not tracked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback
from ray.tune import Callback

from xattn_ray.errors import XattnError
from xattn_ray.study.config import Experiment
from xattn_ray.study.records import run_fields
from xattn_ray.study.spec import RunSpec
from xattn_ray.study.tracking import BACKENDS, is_file_store


def run_parameters(experiment: Experiment, spec: RunSpec, selection: str) -> dict:
    """What a tracker records as the run's parameters: its rows' fields known before it trains (run id,
    stage, policy, seed, pair, config hash, ...) and its resolved configuration, as the store's `hparams`
    (nested: `{"train": {"lr": ...}, ...}`; each tracker flattens it its own way)."""
    fields = run_fields(experiment, spec, selection)
    hparams = json.loads(fields.pop("hparams"))
    return {**fields, **hparams}


# What Tune adds to every report that is no measurement: its copy of the trial's config (MLflow would
# record the config's numbers as metrics), whether the trial is done, its process id, the clock.
TUNE_BOOKKEEPING = ("config", "done", "pid", "timestamp")


def tracked_result(result: dict) -> dict:
    """A trial's report as the tracker records it: without Tune's bookkeeping, and with the final report's
    `valid_loss`, which is the run's best validation loss, as `best_valid_loss` (the name each validation's
    report gives that number), so that the `valid_loss` curve ends at the last validation."""
    tracked = {key: value for key, value in result.items() if key not in TUNE_BOOKKEEPING}
    if tracked.get("finished") and "valid_loss" in tracked:
        tracked["best_valid_loss"] = tracked.pop("valid_loss")
    return tracked


class _RunTracking:
    """What both trackers' callbacks add to Ray's: the run's parameters, the tracked reports."""

    def __init__(self, experiment: Experiment, selection: str, **options):
        super().__init__(**options)
        self.experiment = experiment
        self.selection = selection

    def parameters(self, trial) -> dict:
        return run_parameters(self.experiment, RunSpec.from_dict(trial.config["spec"]), self.selection)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        super().log_trial_result(iteration, trial, tracked_result(result))


class MLflowRunTracking(_RunTracking, MLflowLoggerCallback):
    """Ray's MLflow callback; each trial's MLflow run also gets the run's parameters."""

    def log_trial_start(self, trial) -> None:
        super().log_trial_start(trial)  # creates the trial's MLflow run (once, also for a retried trial)
        # `_trial_runs` is Ray's map of trials to their MLflow run ids (Ray 2.60; tests/runner/test_tracking.py).
        self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=self.parameters(trial))


class WandbRunTracking(_RunTracking, WandbLoggerCallback):
    """Ray's W&B callback; each trial's W&B run also gets the run's parameters in its config."""

    def _start_logging_actor(self, trial, exclude_results, **init) -> None:
        # Where Ray hands `wandb.init` its arguments, with Tune's config of the trial as `config` (Ray 2.60;
        # tests/runner/test_tracking.py reads the config back).
        init["config"] = {**init["config"], **self.parameters(trial)}
        super()._start_logging_actor(trial, exclude_results, **init)


def tracking_callbacks(experiment: Experiment, storage: Path, selection: str) -> list[Callback]:
    """The Tune callbacks that track a stage's trials: none, or one for the experiment's backend.

    Settings the section leaves out are the environment's (MLFLOW_TRACKING_URI, WANDB_DIR, ...), read
    here on the driver and handed over explicitly, so the callbacks need no environment of their own.
    """
    tracking = experiment.tracking
    if tracking is None:
        return []
    if tracking.backend == "mlflow":
        return [MLflowRunTracking(experiment, selection, tracking_uri=mlflow_uri(experiment, storage),
                                  experiment_name=tracking.experiment or experiment.name)]
    options = {"dir": str(wandb_dir(experiment, storage)), "mode": tracking.mode or os.environ.get("WANDB_MODE"),
               "entity": tracking.entity or os.environ.get("WANDB_ENTITY")}
    return [WandbRunTracking(experiment, selection, project=tracking.project or os.environ.get("WANDB_PROJECT")
                             or experiment.name, **{key: value for key, value in options.items() if value})]


def mlflow_uri(experiment: Experiment, storage: Path) -> str:
    """The MLflow tracking URI: the section's (a file store's folder made absolute), MLFLOW_TRACKING_URI,
    or a file store in STORAGE/mlruns."""
    tracking = experiment.tracking
    store = tracking.file_store(experiment.base_dir)
    if store is not None:
        return store.as_uri()
    return tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or (Path(storage).absolute() / "mlruns").as_uri()


def wandb_dir(experiment: Experiment, storage: Path) -> Path:
    """Where W&B writes its run files: the section's `dir`, WANDB_DIR, or STORAGE/wandb."""
    given = experiment.tracking.run_files(experiment.base_dir)
    return given or Path(os.environ.get("WANDB_DIR") or Path(storage) / "wandb").absolute()


def open_tracking(experiment: Experiment, storage: Path) -> None:
    """Prepare this process for the study's tracking and open the tracker once, before anything trains,
    so that a wrong URI, an unreachable server or a missing W&B login is a one-line error now rather
    than a traceback from inside the first stage.

    Two settings go into this process's environment, where the trackers look for them: MLflow 3 refuses
    a file store unless MLFLOW_ALLOW_FILE_STORE is true (set, unless the environment says otherwise, when
    the tracking URI is a file store), and Ray's W&B callback asks for an API key unless WANDB_MODE is
    offline or disabled (set to the section's `mode`).
    """
    tracking = experiment.tracking
    if tracking is None:
        return
    if tracking.backend == "mlflow":
        where = mlflow_uri(experiment, storage)
        if is_file_store(where):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    else:
        where = str(wandb_dir(experiment, storage))
        Path(where).mkdir(parents=True, exist_ok=True)  # W&B writes into its `dir` but does not create it
        if tracking.mode is not None:
            os.environ["WANDB_MODE"] = tracking.mode
    (callback,) = tracking_callbacks(experiment, storage, "grid")
    try:
        callback.setup()  # MLflow: the tracking store and its experiment; W&B: the API key, unless offline
    except Exception as err:  # whatever the tracker raises here, it is the tracking settings that are wrong
        raise XattnError(f"{BACKENDS[tracking.backend][1]} tracking ({where}): {' '.join(str(err).split())}") from err
