"""Tune, then confirm: one Optuna search per grid cell, then each cell's best configuration at every grid seed.

A grid cell is one child under one policy (and training size, and grid option values). Its search
runs at the grid's first seed: `samples` trials, each a configuration drawn from the search space.
The configuration of the cell's best trial (by the search metric) is then *confirmed*: trained
again with every seed of the grid. The best trial is itself the confirmation at its own seed (same
configuration, same seed: the same run, reused), so a search with one grid seed confirms nothing new.

Optuna refuses Tune's grid axes, so a grid with a search space cannot be one OptunaSearch. `CellSearch`
is one Tune searcher holding an independent OptunaSearch per cell and handing out their suggestions in
turn, so every cell's trials run in the same Tune run, concurrently as resources allow (with ASHA if
asked), and each cell's search learns only from its own trials.

Searches resume from the run folders, which are the record of what was tried: a re-run counts each
cell's finished trials, gives its Optuna search their configurations and scores as evaluated points,
and draws only the trials still missing. (An Optuna journal beside the folders would be a second
record, and a kill between a trial's `result.json` and the journal's entry would put the two out of
step.) A drawn configuration the cell already tried is told to Optuna with its known score and
drawn again: two trials of one configuration would be one run folder.

Every run's rows carry its `selection` (store.SELECTIONS): search trials `search`, the chosen
configuration at each seed `confirmed`. When a later search (more `samples`) finds a better
configuration, the earlier one's confirmations become `superseded`, and their analyses with them; the
report counts `grid` and `confirmed` rows only. Each cell's choice is printed and written to
`<storage>/<experiment>/search-best.json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from collections import defaultdict
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
from xattn_ray.study.kinds import kind_of
from xattn_ray.study.run_folder import Result
from xattn_ray.study.runs import existing_folders, run_folder, run_id
from xattn_ray.study.spec import RunSpec
from xattn_ray.study.sweep import SearchConfig

METRIC_MODES = {"valid_loss": "min", "valid_bleu": "max"}
MAX_DRAWS = 50  # draws per suggestion before a cell's space counts as exhausted (all of it tried)


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


def _key(options: dict) -> str:
    return json.dumps(options, sort_keys=True)


@dataclasses.dataclass
class CellHistory:
    """What a cell's search has already tried: each searched configuration and its score (NaN: failed)."""

    tried: list[tuple[dict, float]] = dataclasses.field(default_factory=list)


class CellSearch(Searcher):
    """`remaining[i]` Optuna suggestions for cell `cells[i]`, warm-started with `histories[i]`; a trial's
    config is {"spec": RunSpec as dict}."""

    def __init__(self, cells: list[RunSpec], search: SearchConfig, remaining: list[int],
                 histories: list[CellHistory]):
        mode = METRIC_MODES[search.metric]
        super().__init__(metric=search.metric, mode=mode)
        self.cells = cells
        self.remaining = list(remaining)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.searches = []
        self.seen: list[dict[str, float]] = []  # per cell: configuration -> score (NaN while it trains)
        for i, history in enumerate(histories):
            scored = [(options, value) for options, value in history.tried if not math.isnan(value)]
            # A fresh seed for each resumption: the sampler's random start-up draws would repeat otherwise.
            seed = (search.seed + 1009 * i + 7919 * len(history.tried)) % 2**32
            self.searches.append(OptunaSearch(
                space=OptunaSearch.convert_search_space(tune_space(search)), metric=search.metric, mode=mode,
                sampler=optuna.samplers.TPESampler(seed=seed),
                points_to_evaluate=[options for options, _ in scored] or None,
                evaluated_rewards=[value for _, value in scored] or None))
            self.seen.append({_key(options): value for options, value in history.tried})
        self.cell_of_trial: dict[str, int] = {}
        self.optuna_id: dict[str, str] = {}  # Tune's trial id -> the id its configuration was drawn under
        self.key_of_trial: dict[str, str] = {}  # Tune's trial id -> its configuration, as a `seen` key
        self.turn = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # fixed at construction from the experiment's search section

    def suggest(self, trial_id: str) -> dict | str | None:
        for _ in range(len(self.cells)):
            cell, self.turn = self.turn, (self.turn + 1) % len(self.cells)
            if self.remaining[cell] <= 0:
                continue
            options = self._draw_new(cell, trial_id)
            if options is None:  # nothing left to try in this cell's space
                self.remaining[cell] = 0
                continue
            self.remaining[cell] -= 1
            self.cell_of_trial[trial_id] = cell
            base = self.cells[cell]
            spec = dataclasses.replace(base, options={**base.options, **options})
            return {"spec": spec.to_dict()}
        return Searcher.FINISHED

    def _draw_new(self, cell: int, trial_id: str) -> dict | None:
        """A configuration cell `cell` has not tried; a repeat is told its known score and drawn again."""
        search, seen = self.searches[cell], self.seen[cell]
        for draw in range(MAX_DRAWS):
            optuna_id = trial_id if draw == 0 else f"{trial_id}~{draw}"
            options = search.suggest(optuna_id)
            known = seen.get(_key(options))
            if _key(options) not in seen:
                seen[_key(options)] = math.nan
                self.optuna_id[trial_id], self.key_of_trial[trial_id] = optuna_id, _key(options)
                return options
            if known is None or math.isnan(known):
                search.on_trial_complete(optuna_id, error=True)
            else:
                search.on_trial_complete(optuna_id, result={self.metric: known})
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searches[self.cell_of_trial[trial_id]].on_trial_result(self.optuna_id[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        cell = self.cell_of_trial[trial_id]
        value = (result or {}).get(self.metric)
        if not error and value is not None:
            self.seen[cell][self.key_of_trial[trial_id]] = value
        self.searches[cell].on_trial_complete(self.optuna_id[trial_id], result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))



# --- Cells and their trials ------------------------------------------------------------------------

def search_seed(experiment: Experiment) -> int:
    """The seed every search trial trains with: the grid's first."""
    return experiment.grid.seeds[0]


def grid_cells(experiment: Experiment) -> list[RunSpec]:
    """The grid's children at the search seed: each is searched on its own."""
    children = next(stage.specs for stage in kind_of(experiment).stages(experiment) if stage.name == "children")
    return [spec for spec in children if spec.seed == search_seed(experiment)]


def cell_of(spec: RunSpec, experiment: Experiment) -> RunSpec:
    """The grid cell a child run belongs to: its spec at the search seed, without the searched options."""
    searched = set(experiment.search.space)
    options = {name: value for name, value in spec.options.items() if name not in searched}
    return dataclasses.replace(spec, options=options, seed=search_seed(experiment))


def searched_options(spec: RunSpec, experiment: Experiment) -> dict:
    return {name: value for name, value in spec.options.items() if name in experiment.search.space}


def cell_runs(experiment: Experiment, storage: Path) -> dict[str, list[Result]]:
    """Finished child runs of the study by grid cell (its run id): every seed's, whoever started them.

    A run belongs to a cell when it has every searched option and its folder is the one its spec names
    (a folder set aside or copied by hand is not).
    """
    cells = {run_id(experiment, cell) for cell in grid_cells(experiment)}
    runs: dict[str, list[Result]] = defaultdict(list)
    for folder in existing_folders(storage, experiment):
        result = folder.result()
        if result is None or result.spec.stage != "child" or set(experiment.search.space) - set(result.spec.options):
            continue
        key = run_id(experiment, cell_of(result.spec, experiment))
        if key in cells and run_folder(storage, experiment, result.spec) == folder:
            runs[key].append(result)
    return runs


def search_trials(experiment: Experiment, storage: Path) -> dict[str, list[Result]]:
    """Each cell's finished search trials: its runs at the search seed."""
    seed = search_seed(experiment)
    return {key: [result for result in results if result.spec.seed == seed]
            for key, results in cell_runs(experiment, storage).items()}


def score(result: Result, metric: str) -> float:
    """The search metric of a finished run (lower is better for loss, higher for BLEU); NaN if it has none."""
    value = result.best_valid_loss if metric == "valid_loss" else result.valid_bleu
    return math.nan if value is None or not result.ok else value


# --- The three steps: search, choose, confirm ------------------------------------------------------

def run_search(experiment: Experiment, storage: Path, store: ResultsStore, plan: ResourcePlan,
               progress_interval: float, unfinished: dict[str, str]) -> None:
    """Search every grid cell that has fewer than `samples` finished trials, continuing from those it has."""
    search = experiment.search
    tried = search_trials(experiment, storage)
    cells, remaining, histories = [], [], []
    for cell in grid_cells(experiment):
        trials = tried.get(run_id(experiment, cell), [])
        if len(trials) < search.samples and runnable(experiment, cell, storage, store, unfinished):
            cells.append(cell)
            remaining.append(search.samples - len(trials))
            histories.append(CellHistory([(searched_options(result.spec, experiment), score(result, search.metric))
                                          for result in trials]))
    print(f"[search] {len(cells)} grid cells to search ({search.samples} {search.metric} trials each, seed "
          f"{search_seed(experiment)}), {len(grid_cells(experiment)) - len(cells)} searched earlier", flush=True)
    if cells:
        mode = METRIC_MODES[search.metric]
        scheduler = None
        if search.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=search.grace_validations,
                                      max_t=10**9)
        tune_stage("search", experiment, {}, storage, store, plan, progress_interval, unfinished,
                   search_alg=CellSearch(cells, search, remaining, histories), samples=sum(remaining),
                   scheduler=scheduler, metric=search.metric, mode=mode, selection="search")


def best_trials(experiment: Experiment, storage: Path) -> dict[str, Result]:
    """Each searched cell's best finished trial by the search metric (cells with no scored trial are left out)."""
    metric = experiment.search.metric
    sign = 1 if metric == "valid_loss" else -1
    best = {}
    for key, trials in search_trials(experiment, storage).items():
        scored = [result for result in trials if not math.isnan(score(result, metric))]
        if scored:  # ties go to the earlier run id, so the choice does not depend on listing order
            best[key] = min(scored, key=lambda result: (sign * score(result, metric), result.run_id))
    return best


def confirmation_specs(experiment: Experiment, best: dict[str, Result]) -> list[RunSpec]:
    """Each cell's best configuration at every grid seed (at the search seed: the best trial itself)."""
    return [dataclasses.replace(result.spec, seed=seed) for _, result in sorted(best.items())
            for seed in experiment.grid.seeds]


def record_choices(experiment: Experiment, storage: Path, best: dict[str, Result]) -> None:
    """Print each cell's chosen configuration and write them to `search-best.json`."""
    metric = experiment.search.metric
    trials = search_trials(experiment, storage)
    records = [{"cell": key, "chosen_by": f"best {metric} of {len(trials[key])} trials at seed {search_seed(experiment)}",
                metric: score(result, metric), "run_id": result.run_id,
                "options": searched_options(result.spec, experiment),
                "tests": {name: test.bleu for name, test in result.tests.items()}}
               for key, result in sorted(best.items())]
    path = Path(storage) / experiment.name / "search-best.json"
    path.write_text(json.dumps(records, indent=2) + "\n")
    print(f"chosen configuration of each cell (best {metric}), confirmed with seeds "
          f"{', '.join(map(str, experiment.grid.seeds))}; also in {path}:")
    for record in records:
        options = ", ".join(f"{k}={v:.4g}" for k, v in sorted(record["options"].items()))
        print(f"  {record['cell']:<44} {metric} {record[metric]:.3f}  {options}")


def relabel_unchosen(experiment: Experiment, storage: Path, store: ResultsStore, confirmed: list[RunSpec]) -> None:
    """Mark the rows of runs that no longer count: a trial that was its cell's best before another beat it
    goes back to `search`; a confirmation of a replaced configuration, and its analyses, become `superseded`."""
    counted = {run_id(experiment, spec) for spec in confirmed}
    wanted = {}
    for results in cell_runs(experiment, storage).values():
        for result in results:
            if result.run_id not in counted:
                wanted[result.run_id] = "search" if result.spec.seed == search_seed(experiment) else "superseded"
    if not wanted:
        return
    rows = store.table(experiment.name, [("stage", "in", ["child", "analysis"])]).to_pylist()
    files = defaultdict(list)  # (stage, run_id, eval) -> its rows: the store replaces a file whole
    for row in rows:
        files[(row["stage"], row["run_id"], row["eval"])].append(row)
    relabelled = [{**row, "selection": _label_of(row, wanted)} for group in files.values()
                  if any(_label_of(row, wanted) != row["selection"] for row in group) for row in group]
    if relabelled:
        store.write(relabelled)


def _label_of(row: dict, wanted: dict[str, str]) -> str:
    runs = _analysed_runs(row) if row["stage"] == "analysis" else {row["run_id"]}
    label = next((wanted[run] for run in sorted(runs) if run in wanted), None)
    if label is None:
        return row["selection"]
    return "superseded" if row["stage"] == "analysis" else label  # an analysis is never a search trial


def _analysed_runs(row: dict) -> set[str]:
    """The child runs an analysis row was computed from: the stitched pair, or the one run in its id."""
    if row["eval"] == "zeroshot" and row["stitched_from"]:
        stitched = json.loads(row["stitched_from"])
        return {stitched["body"], stitched["embeddings"]}
    return {row["run_id"].removeprefix(f"{row['eval']}-")}
