"""One Ray Tune trial = one run: the training loop in the trial's process, or a Ray Train worker group.

Three layers, as in Ray's own examples:

    run_trial (Tune function, one per grid cell)
      ├─ one worker:      study.runs.run here, reporting through `ray.tune.report`
      └─ several workers: TorchTrainer(worker_loop) — each worker runs the same run with its model
                          wrapped in DDP and reports through `ray.train.report`; a TuneReportCallback
                          forwards rank 0's reports to this trial

A one-worker trial skips the TorchTrainer because its start-up costs about 30 s per trial
(docs/ray-facts.md, "Trial start-up cost").
Both paths resume from the run folder's `last.pt`, so a retried trial (Tune's or Train's FailureConfig)
continues from its last checkpoint; the study driver only starts trials for runs that are not finished.
When the run ends, the trial writes its rows to the results store and makes one last report.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from xattn_ray.store import ResultsStore
from xattn_ray.study.config import Experiment
from xattn_ray.study.records import outcome_rows
from xattn_ray.study.runs import run, run_folder, run_id
from xattn_ray.study.spec import RunSpec

MAX_FAILURES = 2  # retries of a failed trial (or worker group), each from the last checkpoint


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a study shares (passed once through `tune.with_parameters`)."""

    experiment: Experiment
    storage: Path  # absolute, visible from every node
    store_uri: str
    workers: int
    worker_resources: dict[str, float]
    score_valid: bool  # a search optimising validation BLEU
    selection: str = "grid"  # what the stage's runs are to a report (store.SELECTIONS)


class TuneReporter:
    """The training loop's reporter inside a Tune function."""

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        ray.tune.report(dict(metrics))


class TrainReporter:
    """The training loop's reporter inside a Ray Train worker (rank 0's metrics reach Tune)."""

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        ray.train.report(dict(metrics))


def run_trial(config: dict, context: TrialContext) -> None:
    """The Tune function: train and score the run `config["spec"]` names, write its rows, report."""
    spec = RunSpec.from_dict(config["spec"])
    experiment = context.experiment
    threads = int(context.worker_resources.get("CPU", 1))
    torch.set_num_threads(threads)
    if context.workers == 1:
        _run(context, spec, TuneReporter(), wrap_model=None)
    else:
        _fit_worker_group(context, spec)
    result = run_folder(context.storage, experiment, spec).result()
    trial_id = ray.tune.get_context().get_trial_id()
    ResultsStore(context.store_uri).write(outcome_rows(experiment, spec, result, trial_id, context.selection))
    final = {"finished": True, "status": result.status, "update": result.updates,
             "valid_loss": result.best_valid_loss, "valid_bleu": result.valid_bleu}
    for name, test in result.tests.items():
        tag = name.replace("+", "_")  # TensorBoard tags allow no `+`
        final[f"bleu/{tag}"], final[f"chrf/{tag}"] = test.bleu, test.chrf
    ray.tune.report(final)


def _run(context: TrialContext, spec: RunSpec, reporter, wrap_model) -> None:
    """The run for one worker; resumes from the run folder when a checkpoint is there."""
    run(context.experiment, spec, context.storage, reporter=reporter, resume=True, wrap_model=wrap_model,
        score_valid=context.score_valid)


def _fit_worker_group(context: TrialContext, spec: RunSpec) -> None:
    """Data-parallel training of one run on `context.workers` Ray Train workers (gloo on CPU, NCCL on GPU)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    resources = context.worker_resources
    trainer = TorchTrainer(
        _worker_loop, train_loop_config={"context": context, "spec": spec.to_dict()},
        scaling_config=ScalingConfig(num_workers=context.workers, use_gpu=resources.get("GPU", 0) > 0,
                                     resources_per_worker=resources,
                                     placement_strategy=context.experiment.resources.placement.upper()),
        run_config=RunConfig(name=run_id(context.experiment, spec), storage_path=str(context.storage / "ray-train"),
                             failure_config=FailureConfig(max_failures=MAX_FAILURES),
                             callbacks=[TuneReportCallback()]))
    trainer.fit()


def _worker_loop(config: dict) -> None:
    """Each Ray Train worker: the same run, its model wrapped in DDP, its share of every batch."""
    from ray.train.torch import prepare_model

    context: TrialContext = config["context"]
    torch.set_num_threads(int(context.worker_resources.get("CPU", 1)))
    spec = RunSpec.from_dict(config["spec"])
    wrap = prepare_model
    if spec.attention == "xlquery":  # Q_cross gets no gradient from a batch without a second segment
        wrap = functools.partial(prepare_model, parallel_strategy_kwargs={"find_unused_parameters": True})
    _run(context, spec, TrainReporter(), wrap_model=wrap)
