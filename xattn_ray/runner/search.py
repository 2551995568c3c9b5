"""Search spaces: the experiment's `search` section in Ray Tune's vocabulary, one Optuna search per cell.

Optuna refuses Tune's grid axes, so a grid with a search space cannot be one OptunaSearch. `CellSearch`
is one Tune searcher holding an independent OptunaSearch per grid cell and handing out their
suggestions in turn, so every cell's trials run in the same Tune run, concurrently as resources allow,
and each cell's search learns only from its own trials.
"""

from __future__ import annotations

import pickle

import optuna
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from xattn_ray.study.config import SearchConfig
from xattn_ray.study.runs import RunSpec

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
            spec = RunSpec(base.stage, base.run, base.seed, base.policy, base.size, {**base.options, **options})
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
