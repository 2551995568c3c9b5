"""A whole study on Ray: parents, then children, each stage one Ray Tune run whose trials are its runs.

    run_study(experiment, storage, store_uri)
      1. connect to Ray (a local instance unless an address is given) and plan resources;
      2. parents:  trials for parent runs that have no finished result yet;
      3. children: trials for the grid's child runs (or one Optuna search per grid cell), each starting
                   from its parent's best checkpoint;
      4. analyses: forgetting, zero-shot stitching, lexicon induction on the finished children;
      5. print BLEU by pair and policy (rows of reused runs were written again: idempotent).

A run is finished when its folder holds `result.json` (written last by the pipeline). Finished runs
are reused, never retrained: adding a policy or a seed to a finished study trains only what is new.
A run with checkpoints but no result was interrupted; `resume=True` continues it from `last.pt`.
"""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from xattn_ray.study.config import Experiment
from xattn_ray.errors import XattnError
from xattn_ray.study.training import read_summary
from xattn_ray.runner.plan import ResourcePlan, child_specs, parent_specs, plan_resources, pretrain_specs
from xattn_ray.study.records import outcome_rows, unfinished_rows
from xattn_ray.study.runs import CODESWITCH_STAGES, RunSpec, parent_spec, run_directory, run_id
from xattn_ray.store import ResultsStore, codeswitch_kind

log = logging.getLogger(__name__)

# Tune's trial folders are named by the run, and trials read their data by absolute paths: Tune must
# not change the working directory (DESIGN.md), locally or on a cluster's workers.
RAY_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0"}


@dataclass(frozen=True)
class StudyResult:
    """What a study ended with: the summaries of every run, by run id, and those that did not finish."""

    summaries: dict[str, dict]
    unfinished: dict[str, str]  # run id (or analysis task id) -> why
    analyses: list[dict]  # the study's analysis rows from the results store


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
        # "local": always a new instance, never a cluster some other command left running here.
        ray.init(address="local", num_cpus=num_cpus, runtime_env={"env_vars": RAY_ENV}, log_to_driver=False)


def cluster_resources() -> dict[str, float]:
    import ray

    return {key: value for key, value in ray.cluster_resources().items() if key in ("CPU", "GPU")}


def run_study(experiment: Experiment, storage: Path, store_uri: str, resume: bool = False,
              address: str | None = None, num_cpus: int | None = None,
              progress_interval: float = 30.0) -> StudyResult:
    """Run every stage of `experiment`; results go to `store_uri`, run folders under `storage`."""
    storage = Path(storage).absolute()
    parents, pretraining = parent_specs(experiment), pretrain_specs(experiment)
    children = child_specs(experiment) if experiment.search is None else []
    _refuse_unfinished(experiment, storage, parents + pretraining + children, resume)
    connect(address, num_cpus)
    plan = plan_resources(experiment.resources, cluster_resources(), autoscaling=address is not None)
    log.info("%s", plan.describe(cluster_resources()))
    store = ResultsStore(store_uri)
    unfinished: dict[str, str] = {}

    _run_stage("parents", experiment, parents, storage, store, plan, progress_interval, unfinished)
    if pretraining:
        _run_stage("pretrain", experiment, _runnable(experiment, pretraining, store, unfinished), storage, store,
                   plan, progress_interval, unfinished)
    if experiment.search is None:
        _run_stage("children", experiment, _runnable(experiment, children, store, unfinished), storage, store,
                   plan, progress_interval, unfinished)
    else:
        from xattn_ray.runner.sweep import run_search

        run_search(experiment, storage, store, plan, progress_interval, unfinished)
    _run_analyses(experiment, storage, store, plan, progress_interval, unfinished)
    summaries = {}
    for spec in _all_specs(experiment, storage):
        summary = read_summary(run_directory(storage, experiment, spec))
        if summary is not None:
            summaries[run_id(experiment, spec)] = summary
    analyses = store.read(experiment=experiment.name)
    analyses = analyses[(analyses["stage"] == "analysis") & (analyses["status"] == "ok")]
    return StudyResult(summaries, unfinished, analyses.to_dict("records"))


def runnable(experiment: Experiment, spec: RunSpec, store: ResultsStore, unfinished: dict[str, str]) -> bool:
    """Whether the run `spec` starts from finished; if not, it is recorded as failed with the reason."""
    parent = parent_spec(experiment, spec)
    if run_id(experiment, parent) not in unfinished:
        return True
    why = f"{parent.stage} run {run_id(experiment, parent)} did not finish"
    unfinished[run_id(experiment, spec)] = why
    store.write(unfinished_rows(experiment, spec, "failed", why))
    return False


def _runnable(experiment: Experiment, specs: list[RunSpec], store: ResultsStore,
              unfinished: dict[str, str]) -> list[RunSpec]:
    return [spec for spec in specs if runnable(experiment, spec, store, unfinished)]


def _all_specs(experiment: Experiment, storage: Path) -> list[RunSpec]:
    """Every run the study knows of: the grid's, and those a search created (found by their folders)."""
    specs = parent_specs(experiment) + pretrain_specs(experiment) + child_specs(experiment)
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
    from xattn_ray.runner.trial import MAX_FAILURES, TrialContext, run_trial

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
            unfinished[identifier] = why
        else:  # a scheduler (ASHA) ended it: expected, recorded, not a failure of the study
            why = "stopped early by the scheduler"
            status = "stopped"
        store.write(unfinished_rows(experiment, spec, status, why, _trial_id(result)))
    return list(results)


def _run_analyses(experiment: Experiment, storage: Path, store: ResultsStore, plan: ResourcePlan,
                  progress_interval: float, unfinished: dict[str, str]) -> None:
    """The analyses stage: one Tune trial per task not done yet (a task is done once its rows are stored)."""
    from ray import tune

    from xattn_ray.study.analyses import AnalysisTask, analysis_tasks, task_fields, task_id, task_marker
    from xattn_ray.runner.progress import ProgressTable
    from xattn_ray.runner.trial import TrialContext, run_analysis_trial
    from xattn_ray.store import make_row

    finished = [spec for spec in _all_specs(experiment, storage) if spec.stage == "child"
                and (read_summary(run_directory(storage, experiment, spec)) or {}).get("status") == "ok"]
    tasks = analysis_tasks(experiment, finished)
    if not tasks:
        return
    pending = [task for task in tasks if not task_marker(storage, experiment, task).is_file()]
    print(f"[analyses] {len(pending)} to run, {len(tasks) - len(pending)} done earlier", flush=True)
    if not pending:
        return
    cpus = {"CPU": 1.0}  # decoding a test set: one CPU each, as many at once as the cluster has
    context = TrialContext(experiment=experiment, storage=storage, store_uri=store.uri, workers=1,
                           worker_resources=cpus, score_valid=False)

    def trial_name(trial) -> str:
        return task_id(experiment, AnalysisTask.from_dict(trial.config["task"]))

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_analysis_trial, context=context), cpus),
        param_space={"task": tune.grid_search([task.to_dict() for task in pending])},
        tune_config=tune.TuneConfig(max_concurrent_trials=max(1, int(cluster_resources().get("CPU", 1))),
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name="analyses", storage_path=str(storage / experiment.name / "tune"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  callbacks=[ProgressTable("analyses", progress_interval)]))
    for result in tuner.fit():
        task = AnalysisTask.from_dict(result.config["task"])
        if result.error is not None:
            why = _one_line(result.error)
            unfinished[task_id(experiment, task)] = why
            store.write([make_row(**task_fields(experiment, task), eval=task.kind, status="failed", error=why)])


def _trial_id(result) -> str | None:
    metrics = result.metrics or {}
    return metrics.get("trial_id")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:500]


def format_summary(result: StudyResult) -> str:
    """BLEU on each run's first test set: a row per policy, a column per pair, mean ± std over seeds."""
    if any(summary["spec"]["stage"] in CODESWITCH_STAGES for summary in result.summaries.values()):
        return _codeswitch_summary(result)
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
    width = max([len(p) for p in pairs] + [12])
    lines = ["BLEU on each run's first test set (mean ± std over seeds)",
             f"{'policy':<10} " + " ".join(f"{pair:>{width}}" for pair in pairs)]
    for policy in policies:
        lines.append(f"{policy:<10} " + " ".join(f"{_mean_std(cells.get((policy, pair), [])):>{width}}"
                                                   for pair in pairs))
    lines += _analysis_summary(result.analyses)
    return "\n".join(lines + _unfinished_lines(result))


def _mean_std(scores: list[float]) -> str:
    """`12.34 ± 0.56` over seeds (no ± for one seed, empty for none)."""
    text = f"{statistics.mean(scores):.2f}" if scores else ""
    return text + (f" ± {statistics.stdev(scores):.2f}" if len(scores) > 1 else "")


def _unfinished_lines(result: StudyResult) -> list[str]:
    return [f"not finished: {identifier}: {why}" for identifier, why in sorted(result.unfinished.items())]


def _codeswitch_summary(result: StudyResult) -> str:
    """A code-switching study: mean BLEU over each kind's test sets, a row per policy and attention variant."""
    kinds = ("mono", "seen", "unseen")
    cells: dict[tuple[str, str], list[float]] = {}
    for summary in result.summaries.values():
        spec = summary["spec"]
        if summary["status"] != "ok" or spec["stage"] == "pretrain":
            continue
        label = "base" if spec["stage"] == "base" else f"{spec['policy']} {spec['attention']}" + (
            "" if spec["alphas"] is None else f" {spec['alphas'][0]:g}/{spec['alphas'][1]:g}")
        for kind in kinds:
            scores = [test["bleu"] for name, test in summary["tests"].items() if codeswitch_kind(name) == kind]
            if scores:
                cells.setdefault((label, kind), []).append(statistics.mean(scores))
    labels = sorted({label for label, _ in cells}, key=lambda label: (label != "base", label))
    lines = ["BLEU, mean over each kind's test sets (mean ± std over seeds): single sentences (mono), "
             "code-switched training pairs (seen), held-out pairs (unseen)",
             f"{'run':<26} " + " ".join(f"{kind:>14}" for kind in kinds)]
    for label in labels:
        lines.append(f"{label:<26} " + " ".join(f"{_mean_std(cells.get((label, kind), [])):>14}" for kind in kinds))
    return "\n".join(lines + _unfinished_lines(result))


def _analysis_summary(rows: list[dict]) -> list[str]:
    """One line per analysed pair and policy, means over seeds (first test set for BLEU)."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        if row["eval"] == "bli":
            key = ("lexicon induction P@1", f"{row['pair']} ({row['dictionary']}, {int(row['n_evaluated'])} words)",
                   f"{row['policy']} {row['bli_method']}")
            groups.setdefault(key, []).append(100 * row["bli_p1"])
        else:
            title = {"forgetting": "forgetting: parent's test BLEU with its embeddings plugged back",
                     "zeroshot": "zero-shot BLEU of stitched models"}[row["eval"]]
            reference = f", parent {row['reference_bleu']:.2f}" if row["eval"] == "forgetting" else ""
            key = (title, f"{row['pair']} on {row['test_set']}{reference}", row["policy"])
            groups.setdefault(key, []).append(row["bleu"])
    lines = []
    for title in sorted({key[0] for key in groups}):
        lines.append(title)
        for (_, subject, label), values in sorted((k, v) for k, v in groups.items() if k[0] == title):
            lines.append(f"  {subject:<44} {label:<18} {sum(values) / len(values):6.2f}")
    return lines
