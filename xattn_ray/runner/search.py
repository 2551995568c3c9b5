"""The children stage of a study with a `search` section: one Optuna search per grid cell.

Optuna refuses Tune's grid axes, so a grid with a search space cannot be one OptunaSearch. `CellSearch`
is one Tune searcher holding an independent OptunaSearch per grid cell and handing out their
suggestions in turn, so every cell's trials run in the same Tune run, concurrently as resources allow
(with ASHA if asked), and each cell's search learns only from its own trials. Afterwards the best trial
of each cell, by the search metric, is printed and written to `<storage>/<experiment>/search-best.json`;
every trial's rows are in the results store as usual.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from pathlib import Path

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from xattn_ray.runner.plan import ResourcePlan
from xattn_ray.runner.stages import runnable, tune_stage
from xattn_ray.store import ResultsStore
from xattn_ray.study.config import Experiment
from xattn_ray.study.sweep import SearchConfig
from xattn_ray.study.kinds import kind_of
from xattn_ray.study.run_folder import Result
from xattn_ray.study.runs import existing_folders, run_folder, run_id
from xattn_ray.study.spec import RunSpec

METRIC_MODES = {"valid_loss": "min", "valid_bleu": "max"}


def tune_space(search: SearchConfig) -> dict:
    """{option: tune domain} for the search section's space."""
    space = {}
    for name, domain in search.space.items():
        if domain.uniform is not None:
            space[name] = tune.uniform(*domain.uniform)
        elif domain.loguniform is not None:
            space[name] = tune.loguniform(*domain.loguniform)
        elif domain.randint is not None:
            space[name] = tune.randint(*domain.randint)
        else:
            space[name] = tune.choice(list(domain.choice))
    return space


class CellSearch(Searcher):
    """`samples` Optuna suggestions for each of `cells`; a trial's config is {"spec": RunSpec as dict}."""

    def __init__(self, cells: list[RunSpec], search: SearchConfig):
        mode = METRIC_MODES[search.metric]
        super().__init__(metric=search.metric, mode=mode)
        self.cells = cells
        self.samples = search.samples
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.searches = [OptunaSearch(space=tune_space(search), metric=search.metric, mode=mode,
                                      sampler=optuna.samplers.TPESampler(seed=search.seed + i))
                         for i in range(len(cells))]
        self.suggested = [0] * len(cells)
        self.cell_of_trial: dict[str, int] = {}
        self.turn = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # fixed at construction from the experiment's search section

    def suggest(self, trial_id: str) -> dict | str | None:
        for _ in range(len(self.cells)):
            cell, self.turn = self.turn, (self.turn + 1) % len(self.cells)
            if self.suggested[cell] >= self.samples:
                continue
            options = self.searches[cell].suggest(trial_id)
            self.suggested[cell] += 1
            self.cell_of_trial[trial_id] = cell
            base = self.cells[cell]
            spec = dataclasses.replace(base, options={**base.options, **options})
            return {"spec": spec.to_dict()}
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searches[self.cell_of_trial[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searches[self.cell_of_trial[trial_id]].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))

def grid_cells(experiment: Experiment) -> list[RunSpec]:
    """The grid's children: each is searched on its own."""
    return next(stage.specs for stage in kind_of(experiment).stages(experiment) if stage.name == "children")


def cell_of(spec: RunSpec, experiment: Experiment) -> RunSpec:
    """The grid cell a searched run belongs to: its spec without the searched options."""
    searched = set(experiment.search.space)
    options = {name: value for name, value in spec.options.items() if name not in searched}
    return dataclasses.replace(spec, options=options)


def searched_specs(experiment: Experiment, storage: Path) -> list[RunSpec]:
    """Child runs of this study found in its run folders (finished ones), belonging to a grid cell."""
    cells = {run_id(experiment, cell) for cell in grid_cells(experiment)}
    specs = []
    for folder in existing_folders(storage, experiment):
        result = folder.result()
        if result is None:
            continue
        spec = result.spec
        if spec.stage == "child" and run_id(experiment, cell_of(spec, experiment)) in cells \
                and run_folder(storage, experiment, spec) == folder:
            specs.append(spec)
    return specs


def score(result: Result, metric: str) -> float:
    """The search metric of a finished run (lower is better for loss, higher for BLEU)."""
    value = result.best_valid_loss if metric == "valid_loss" else result.valid_bleu
    return math.nan if value is None else value


def run_search(experiment: Experiment, storage: Path, store: ResultsStore, plan: ResourcePlan,
               progress_interval: float, unfinished: dict[str, str]) -> None:
    """Search every grid cell that has fewer than `samples` finished trials; record each cell's best."""
    search = experiment.search
    done: dict[str, int] = {}
    for spec in searched_specs(experiment, storage):
        key = run_id(experiment, cell_of(spec, experiment))
        done[key] = done.get(key, 0) + 1
    cells = []
    for cell in grid_cells(experiment):
        if (runnable(experiment, cell, storage, store, unfinished)
                and done.get(run_id(experiment, cell), 0) < search.samples):
            cells.append(cell)
    print(f"[search] {len(cells)} grid cells to search ({search.samples} {search.metric} trials each), "
          f"{len(grid_cells(experiment)) - len(cells)} done earlier", flush=True)
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
    best: dict[str, tuple[float, Result]] = {}
    for spec in searched_specs(experiment, storage):
        result = run_folder(storage, experiment, spec).result()
        value = score(result, metric)
        if not result.ok or math.isnan(value):
            continue
        key = run_id(experiment, cell_of(spec, experiment))
        if key not in best or sign * value < sign * best[key][0]:
            best[key] = (value, result)
    records = [{"cell": key, metric: value, "run_id": result.run_id, "options": result.spec.options,
                "tests": {name: test.bleu for name, test in result.tests.items()}}
               for key, (value, result) in sorted(best.items())]
    path = Path(storage) / experiment.name / "search-best.json"
    path.write_text(json.dumps(records, indent=2) + "\n")
    print(f"best trial of each cell ({metric}), also in {path}:")
    for record in records:
        options = ", ".join(f"{k}={v:.4g}" for k, v in sorted(record["options"].items()))
        print(f"  {record['cell']:<44} {metric} {record[metric]:.3f}  {options}")
