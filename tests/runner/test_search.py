"""A cell's search: specs rebuilt from the cell, resumption from what was tried, no configuration twice."""

from types import SimpleNamespace

from ray.tune.search import Searcher

from xattn_ray.runner.search import CellHistory, CellSearch, cell_of
from xattn_ray.study.spec import RunSpec
from xattn_ray.study.sweep import SearchConfig, SearchDomain

SEARCH = SearchConfig(space={"lr": SearchDomain(loguniform=(1e-4, 1e-3))}, samples=2)
# A cell with every field set, so a rebuild that forgets one (attention, alphas, size) shows.
CELL = RunSpec("codeswitch", "cs", 3, "body", 500, {"warmup_updates": 10.0}, "xlquery", (0.3, 0.5))


def suggestions(search: CellSearch, limit: int = 20) -> list[dict]:
    """Every configuration `search` hands out, finishing each trial with a made-up score."""
    out = []
    for i in range(limit):
        config = search.suggest(f"trial-{i}")
        if config == Searcher.FINISHED or config is None:
            return out
        out.append(RunSpec.from_dict(config["spec"]).options)
        search.on_trial_complete(f"trial-{i}", {"valid_loss": 1.0 + i, "config": config})
    raise AssertionError(f"still suggesting after {limit} trials")


def test_a_searched_spec_keeps_its_cell_and_adds_the_suggestion():
    search = CellSearch([CELL], SEARCH, [SEARCH.samples], [CellHistory()])
    suggested = RunSpec.from_dict(search.suggest("trial-1")["spec"])
    assert set(suggested.options) == {"warmup_updates", "lr"} and 1e-4 <= suggested.options["lr"] <= 1e-3
    assert RunSpec.from_dict({**suggested.to_dict(), "options": CELL.options}) == CELL


def test_the_cell_of_a_run_is_its_spec_at_the_search_seed_without_the_searched_options():
    experiment = SimpleNamespace(search=SEARCH, grid=SimpleNamespace(seeds=[3, 4]))
    searched = RunSpec.from_dict({**CELL.to_dict(), "options": {**CELL.options, "lr": 3e-4}})
    confirmation = RunSpec.from_dict({**searched.to_dict(), "seed": 4})
    assert cell_of(searched, experiment) == CELL
    assert cell_of(confirmation, experiment) == CELL


def test_each_cell_gets_only_its_remaining_trials():
    other = RunSpec.from_dict({**CELL.to_dict(), "policy": "xattn"})
    search = CellSearch([CELL, other], SEARCH, [2, 1], [CellHistory(), CellHistory([({"lr": 5e-4}, 2.0)])])
    drawn = suggestions(search)
    assert len(drawn) == 3
    assert all(options["lr"] != 5e-4 for options in drawn)


def test_a_resumed_search_learns_from_the_tried_configurations_and_draws_new_ones():
    first = suggestions(CellSearch([CELL], SEARCH, [3], [CellHistory()]))
    history = CellHistory([({"lr": options["lr"]}, 2.0 + i) for i, options in enumerate(first)])
    resumed = suggestions(CellSearch([CELL], SEARCH, [3], [history]))
    assert len(resumed) == 3
    assert not {o["lr"] for o in resumed} & {o["lr"] for o in first}  # a fresh sampler seed: no repeats


def test_a_configuration_is_never_tried_twice_and_a_small_space_ends_early():
    choice = SearchConfig(space={"lr": SearchDomain(choice=[1e-3, 2e-3, 3e-3])}, samples=8)
    drawn = suggestions(CellSearch([CELL], choice, [8], [CellHistory([({"lr": 2e-3}, 1.5)])]))
    assert sorted(options["lr"] for options in drawn) == [1e-3, 3e-3]
