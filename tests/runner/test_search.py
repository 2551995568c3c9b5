"""Searches rebuild run specs from a grid cell: every field but the searched options must survive."""

from types import SimpleNamespace

from xattn_ray.runner.search import CellSearch, cell_of
from xattn_ray.study.sweep import SearchConfig, SearchDomain
from xattn_ray.study.spec import RunSpec

SEARCH = SearchConfig(space={"lr": SearchDomain(loguniform=(1e-4, 1e-3))}, samples=2)
# A cell with every field set, so a rebuild that forgets one (attention, alphas, size) shows.
CELL = RunSpec("codeswitch", "cs", 3, "body", 500, {"warmup_updates": 10.0}, "xlquery", (0.3, 0.5))


def test_a_searched_spec_keeps_its_cell_and_adds_the_suggestion():
    search = CellSearch([CELL], SEARCH)
    suggested = RunSpec.from_dict(search.suggest("trial-1")["spec"])
    assert set(suggested.options) == {"warmup_updates", "lr"} and 1e-4 <= suggested.options["lr"] <= 1e-3
    assert RunSpec.from_dict({**suggested.to_dict(), "options": CELL.options}) == CELL


def test_the_cell_of_a_searched_spec_is_the_spec_without_the_searched_options():
    searched = RunSpec.from_dict({**CELL.to_dict(), "options": {**CELL.options, "lr": 3e-4}})
    assert cell_of(searched, SimpleNamespace(search=SEARCH)) == CELL
