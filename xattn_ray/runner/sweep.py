"""The children stage of a study with a `search` section: one Optuna search per grid cell.

All cells' searches run in one Tune run (`search.CellSearch`), concurrently as resources allow, with
ASHA if asked. Afterwards the best trial of each cell, by the search metric, is printed and written to
`<storage>/<experiment>/search-best.json`; every trial's rows are in the results store as usual.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from xattn_ray.study.config import Experiment
from xattn_ray.study.training import read_summary
from xattn_ray.runner.plan import ResourcePlan, child_specs
from xattn_ray.study.runs import RunSpec, run_directory, run_id
from xattn_ray.store import ResultsStore


def cell_of(spec: RunSpec, experiment: Experiment) -> RunSpec:
    """The grid cell a searched run belongs to: its spec without the searched options."""
    searched = set(experiment.search.space)
    options = {name: value for name, value in spec.options.items() if name not in searched}
    return RunSpec(spec.stage, spec.run, spec.seed, spec.policy, spec.size, options)


def searched_specs(experiment: Experiment, storage: Path) -> list[RunSpec]:
    """Child runs of this study found in its run folders (finished ones), belonging to a grid cell."""
    cells = {run_id(experiment, cell) for cell in child_specs(experiment)}
    specs = []
    for result in sorted((Path(storage) / experiment.name / "runs").glob("*/result.json")):
        spec = RunSpec.from_dict(json.loads(result.read_text())["spec"])
        if spec.stage == "child" and run_id(experiment, cell_of(spec, experiment)) in cells \
                and result.parent == run_directory(storage, experiment, spec):
            specs.append(spec)
    return specs


def score(summary: dict, metric: str) -> float:
    """The search metric of a finished run (lower is better for loss, higher for BLEU)."""
    value = summary["best_valid_loss"] if metric == "valid_loss" else summary["valid_bleu"]
    return math.nan if value is None else value


def run_search(experiment: Experiment, storage: Path, store: ResultsStore, plan: ResourcePlan,
               progress_interval: float, unfinished: dict[str, str]) -> None:
    from ray.tune.schedulers import ASHAScheduler

    from xattn_ray.runner.search import METRIC_MODES, CellSearch
    from xattn_ray.runner.study import runnable, tune_stage

    search = experiment.search
    done: dict[str, int] = {}
    for spec in searched_specs(experiment, storage):
        key = run_id(experiment, cell_of(spec, experiment))
        done[key] = done.get(key, 0) + 1
    cells = []
    for cell in child_specs(experiment):
        if runnable(experiment, cell, store, unfinished) and done.get(run_id(experiment, cell), 0) < search.samples:
            cells.append(cell)
    print(f"[search] {len(cells)} grid cells to search ({search.samples} {search.metric} trials each), "
          f"{len(child_specs(experiment)) - len(cells)} done earlier", flush=True)
    if cells:
        mode = METRIC_MODES[search.metric]
        scheduler = None
        if search.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=search.grace_validations,
                                      max_t=10**9)
        tune_stage("search", experiment, {}, storage, store, plan, progress_interval, unfinished,
                   search_alg=CellSearch(cells, search), samples=len(cells) * search.samples,
                   scheduler=scheduler, metric=search.metric, mode=mode)
    _record_best(experiment, storage)


def _record_best(experiment: Experiment, storage: Path) -> None:
    """Print and write the best finished trial of each cell."""
    metric = experiment.search.metric
    sign = 1 if metric == "valid_loss" else -1
    best: dict[str, tuple[float, RunSpec, dict]] = {}
    for spec in searched_specs(experiment, storage):
        summary = read_summary(run_directory(storage, experiment, spec))
        value = score(summary, metric)
        if summary["status"] != "ok" or math.isnan(value):
            continue
        key = run_id(experiment, cell_of(spec, experiment))
        if key not in best or sign * value < sign * best[key][0]:
            best[key] = (value, spec, summary)
    records = [{"cell": key, metric: value, "run_id": summary["run_id"], "options": spec.options,
                "tests": {name: test["bleu"] for name, test in summary["tests"].items()}}
               for key, (value, spec, summary) in sorted(best.items())]
    path = Path(storage) / experiment.name / "search-best.json"
    path.write_text(json.dumps(records, indent=2) + "\n")
    print(f"best trial of each cell ({metric}), also in {path}:")
    for record in records:
        options = ", ".join(f"{k}={v:.4g}" for k, v in sorted(record["options"].items()))
        print(f"  {record['cell']:<44} {metric} {record[metric]:.3f}  {options}")
