"""The package's layering, checked from the source with `ast`: no import cycles, Ray only in the runner
and the CLI, and no module importing a layer above its own.

Every import counts: at module level and inside functions and methods, `import x` and `from x import y`,
relative imports (resolved against the importing module), and those under `if TYPE_CHECKING:`.
The modules are found by walking the package folder, so a new file is checked as soon as it exists
(and fails if the table below does not place it in a layer).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import PROJECT

PACKAGE = "xattn_ray"
PACKAGE_DIR = PROJECT / PACKAGE

# -- the rules: the single statement of the layering ---------------------------------------------
#
# Each key is a module or a package of the project: a package covers every module inside it, and the
# most specific key wins. The root `xattn_ray` is its `__init__.py` only, so that a new top-level module
# must be given a layer here. A module may import modules of its own layer or of lower-ranked ones.
LAYERS: dict[str, int] = {
    # ground: errors, atomic files, config-schema helpers (YAML in, JSON Schema out) and the results store;
    # every layer may use them.
    "xattn_ray.errors": 0,
    "xattn_ray.files": 0,
    "xattn_ray.schema": 0,
    "xattn_ray.json_schema": 0,
    "xattn_ray.store": 0,
    # engine: tokenizer, model, attention, training loop, decoding, scoring: PyTorch, knows no study.
    "xattn_ray.engine": 1,
    # data: corpora, synthetic language families, code-switched pairs, downloads; feeds the engine.
    "xattn_ray.data": 2,
    # study: the experiment file (study/config.py), the runs it implies, running one of them.
    "xattn_ray.study": 3,
    # report: tables and figures from the results store alone (see CEILINGS: ground only).
    "xattn_ray.report": 4,
    # runner: the studies on Ray (Tune, Train); the only package that imports Ray.
    "xattn_ray.runner": 5,
    # top: the `xattn-ray` command, `python -m xattn_ray`, and the package's own `__init__.py`, which
    # hands notebooks the store and the experiment loader (`from xattn_ray import ResultsStore`).
    "xattn_ray": 6,
    "xattn_ray.cli": 6,
    "xattn_ray.__main__": 6,
}

# Layers that may import less than everything below them: besides their own layer, only layers ranked
# at most this. The report works from the results store alone, never from the engine, data or study.
CEILINGS: dict[str, int] = {
    "xattn_ray.report": 0,
}

# The only modules that may import `ray` or any `ray.*` (keys as in LAYERS).
RAY_ALLOWED: tuple[str, ...] = ("xattn_ray.runner", "xattn_ray.cli")

RANK_NAMES = {0: "ground", 1: "engine", 2: "data", 3: "study", 4: "report", 5: "runner", 6: "top"}


# -- reading the modules -------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One import statement's target, as an absolute dotted name (`ray.tune`, `xattn_ray.study.config`)."""

    module: str  # the importing module
    target: str
    line: int
    text: str  # the statement as written

    def where(self) -> str:
        return f"{self.module} line {self.line}: `{self.text}`"


@dataclass(frozen=True)
class Module:
    name: str
    source: str
    is_package: bool  # an `__init__.py`: its relative imports start from itself, not its parent


def package_sources(package_dir: Path) -> dict[str, str]:
    """Every `.py` file under the package folder, by its path relative to the folder's parent (`xattn_ray/cli.py`)."""
    return {path.relative_to(package_dir.parent).as_posix(): path.read_text(encoding="utf-8")
            for path in sorted(package_dir.rglob("*.py"))}


def modules_from(sources: dict[str, str]) -> dict[str, Module]:
    """Module names from relative paths: `xattn_ray/engine/model.py` -> `xattn_ray.engine.model`."""
    modules = {}
    for path, source in sources.items():
        parts = path.removesuffix(".py").split("/")
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = Module(name, source, is_package)
    return modules


def imports_of(module: Module, known: set[str]) -> list[Import]:
    """Every import in the module, anywhere in its tree; project targets resolved to a known module."""
    tree = ast.parse(module.source, filename=module.name)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        text = " ".join((ast.get_source_segment(module.source, node) or "").split())
        if isinstance(node, ast.Import):
            found += [Import(module.name, alias.name, node.lineno, text) for alias in node.names]
        else:
            base = absolute_base(module, node.level, node.module)
            if base is None:
                continue  # a relative import above the top package: Python refuses it anyway
            for alias in node.names:
                # `from pkg import sub` imports the module pkg.sub when there is one, else a name of pkg.
                candidate = f"{base}.{alias.name}"
                found.append(Import(module.name, candidate if candidate in known else base, node.lineno, text))
    resolved = (Import(i.module, resolve(i.target, known), i.line, i.text) for i in found)
    return list(dict.fromkeys(resolved))  # `from x import a, b`: one import of x, not two


def absolute_base(module: Module, level: int, name: str | None) -> str | None:
    if level == 0:
        return name
    parts = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    if level - 1 >= len(parts):
        return None
    parts = parts[:len(parts) - (level - 1)]
    return ".".join(parts + ([name] if name else []))


def resolve(target: str, known: set[str]) -> str:
    """A project target's most specific known module (`xattn_ray.engine.model.Transformer` -> `...model`)."""
    if not is_project(target):
        return target
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return target


def is_project(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def matching_key(module: str, table) -> str | None:
    """The most specific key of `table` covering `module` (the root key covers only the root)."""
    keys = [key for key in table if module == key or (key != PACKAGE and module.startswith(key + "."))]
    return max(keys, key=len, default=None)


# -- the checks ----------------------------------------------------------------------------------


def cycle_violations(imports: list[Import], modules: set[str]) -> list[str]:
    """One message per strongly connected set of project modules: a shortest cycle through its first module."""
    edges: dict[str, dict[str, Import]] = {name: {} for name in modules}
    for imp in imports:
        if imp.target in modules and imp.target != imp.module:
            edges[imp.module].setdefault(imp.target, imp)
    messages = []
    for component in strongly_connected(edges):
        if len(component) < 2:
            continue
        start = min(component)
        cycle = shortest_cycle(start, edges, component)
        statements = "; ".join(edges[a][b].where() for a, b in zip(cycle, cycle[1:]))
        messages.append(f"import cycle: {' -> '.join(cycle)} ({statements})")
    return messages


def strongly_connected(edges: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (no recursion limit), in a deterministic order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            successor = next(successors, None)
            if successor is not None:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(edges[successor]))))
                elif successor in on_stack:
                    low[node] = min(low[node], index[successor])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return sorted(components, key=min)


def shortest_cycle(start: str, edges: dict[str, dict[str, Import]], component: set[str]) -> list[str]:
    """`[start, ..., start]`, by breadth-first search inside the component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(edges[node]):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if successor in component and successor not in previous:
                    previous[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")  # a component of 2+ modules always has one


def ray_violations(imports: list[Import]) -> list[str]:
    return [f"{imp.where()} imports Ray outside {' and '.join(RAY_ALLOWED)}" for imp in imports
            if (imp.target == "ray" or imp.target.startswith("ray.")) and matching_key(imp.module, RAY_ALLOWED) is None]


def layer_violations(imports: list[Import], modules: set[str]) -> list[str]:
    messages = []
    for name in sorted(modules):
        if matching_key(name, LAYERS) is None:
            messages.append(f"{name} is in no layer: give it one in LAYERS (tests/test_layers.py)")
    for imp in imports:
        own, other = matching_key(imp.module, LAYERS), matching_key(imp.target, LAYERS)
        if own is None or other is None or not is_project(imp.target):
            continue
        own_rank, other_rank = LAYERS[own], LAYERS[other]
        if other_rank == own_rank:
            continue  # its own layer
        ceiling_key = matching_key(imp.module, CEILINGS)
        ceiling = CEILINGS[ceiling_key] if ceiling_key else own_rank
        if other_rank > ceiling:
            what = (f"{RANK_NAMES[own_rank]} may import only {RANK_NAMES[ceiling]}" if ceiling_key
                    else "a layer above its own")
            messages.append(f"{imp.where()}: {imp.module} ({RANK_NAMES[own_rank]}) imports {imp.target} "
                            f"({RANK_NAMES[other_rank]}): {what}")
    return messages


def violations(sources: dict[str, str]) -> list[str]:
    """Every broken rule in a tree of sources keyed by relative path (`xattn_ray/engine/model.py`)."""
    modules = modules_from(sources)
    known = set(modules)
    imports = [imp for module in modules.values() for imp in imports_of(module, known)]
    imports.sort(key=lambda imp: (imp.module, imp.line, imp.target))
    return cycle_violations(imports, known) + ray_violations(imports) + layer_violations(imports, known)


# -- the tests -----------------------------------------------------------------------------------


def test_the_package_keeps_its_layers():
    sources = package_sources(PACKAGE_DIR)
    assert f"{PACKAGE}/cli.py" in sources and f"{PACKAGE}/engine/__init__.py" in sources  # the real folder
    found = violations(sources)
    assert not found, f"{len(found)} layering violation(s) in {PACKAGE}/:\n" + "\n".join(found)


def test_every_layer_in_the_table_exists():
    """A key naming nothing (a package renamed or moved) would silently stop covering anything."""
    names = set(modules_from(package_sources(PACKAGE_DIR)))
    assert sorted(key for key in LAYERS if key not in names) == []


# A small tree that keeps every rule: each case below breaks one on purpose.
CLEAN = {
    "xattn_ray/__init__.py": '"""The package."""\n',
    "xattn_ray/errors.py": "class XattnError(Exception):\n    pass\n",
    "xattn_ray/store.py": "import json\nfrom xattn_ray.errors import XattnError\n",
    "xattn_ray/engine/__init__.py": "",
    "xattn_ray/engine/model.py": "import torch\nfrom .tokenizer import Tokenizer\n",
    "xattn_ray/engine/tokenizer.py": "from .. import errors\n",
    "xattn_ray/data/__init__.py": "",
    "xattn_ray/data/corpus.py": "from xattn_ray.engine import tokenizer\nfrom xattn_ray.errors import XattnError\n",
    "xattn_ray/study/__init__.py": "",
    "xattn_ray/study/config.py": "from xattn_ray.data.corpus import read\n",
    "xattn_ray/report/__init__.py": "from xattn_ray.store import ResultsStore\nfrom xattn_ray.report import tables\n",
    "xattn_ray/report/tables.py": "from ..store import ResultsStore\n",
    "xattn_ray/runner/__init__.py": "",
    "xattn_ray/runner/study.py": "import ray\nfrom ray import tune\nfrom xattn_ray.study import config\n",
    "xattn_ray/cli.py": "def run():\n    import ray\n    from xattn_ray.runner.study import run_study\n",
    "xattn_ray/__main__.py": "from xattn_ray.cli import main\n",
}


def test_the_clean_tree_passes():
    assert violations(CLEAN) == []


@pytest.mark.parametrize("path, source, expected", [
    pytest.param("xattn_ray/engine/tokenizer.py", "def load():\n    from xattn_ray.engine.model import Model\n",
                 "import cycle: xattn_ray.engine.model -> xattn_ray.engine.tokenizer -> xattn_ray.engine.model "
                 "(xattn_ray.engine.model line 2: `from .tokenizer import Tokenizer`; "
                 "xattn_ray.engine.tokenizer line 2: `from xattn_ray.engine.model import Model`)",
                 id="cycle"),
    pytest.param("xattn_ray/engine/model.py", "import torch\n\nclass M:\n    def fit(self):\n        import ray.train\n",
                 "xattn_ray.engine.model line 5: `import ray.train` imports Ray outside xattn_ray.runner and xattn_ray.cli",
                 id="ray-in-engine"),
    pytest.param("xattn_ray/data/options.py",
                 "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..study.config import Corpus\n",
                 "xattn_ray.data.options line 3: `from ..study.config import Corpus`: xattn_ray.data.options (data) "
                 "imports xattn_ray.study.config (study): a layer above its own",
                 id="data-imports-study"),
    pytest.param("xattn_ray/report/tables.py", "from xattn_ray.engine import model\n",
                 "xattn_ray.report.tables line 1: `from xattn_ray.engine import model`: xattn_ray.report.tables "
                 "(report) imports xattn_ray.engine.model (engine): report may import only ground",
                 id="report-imports-engine"),
    pytest.param("xattn_ray/store.py", "import xattn_ray.runner.study\n",
                 "xattn_ray.store line 1: `import xattn_ray.runner.study`: xattn_ray.store (ground) imports "
                 "xattn_ray.runner.study (runner): a layer above its own",
                 id="ground-imports-runner"),
    pytest.param("xattn_ray/helpers.py", "",
                 "xattn_ray.helpers is in no layer: give it one in LAYERS (tests/test_layers.py)",
                 id="unplaced-module"),
])
def test_each_broken_rule_is_reported(path, source, expected):
    assert violations({**CLEAN, path: source}) == [expected]


def test_a_longer_cycle_is_reported_in_order_once():
    tree = {**CLEAN,
            "xattn_ray/engine/a.py": "from . import b\n",
            "xattn_ray/engine/b.py": "import xattn_ray.engine.c\n",
            "xattn_ray/engine/c.py": "from xattn_ray.engine.a import f\n"}
    (message,) = violations(tree)
    assert message.startswith("import cycle: xattn_ray.engine.a -> xattn_ray.engine.b -> xattn_ray.engine.c "
                              "-> xattn_ray.engine.a (")


def test_relative_imports_resolve_against_the_importing_module():
    modules = modules_from(CLEAN)
    known = set(modules)
    assert [i.target for i in imports_of(modules["xattn_ray.engine.tokenizer"], known)] == ["xattn_ray.errors"]
    assert [i.target for i in imports_of(modules["xattn_ray.report.tables"], known)] == ["xattn_ray.store"]
    package = Module("xattn_ray.report", "from . import tables\nfrom .tables import x\n", is_package=True)
    assert [i.target for i in imports_of(package, known)] == ["xattn_ray.report.tables"] * 2


# -- the house's other rules: short modules, and a repository that stands alone ---------------------

MAX_MODULE_LINES = 650  # one concept per module: a longer one holds two


def test_no_module_holds_more_than_one_concept_by_length():
    lengths = {path.relative_to(PROJECT).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
               for path in PACKAGE_DIR.rglob("*.py")}
    assert {path: n for path, n in lengths.items() if n > MAX_MODULE_LINES} == {}


# Files a clone does not have: the study's working notes beside the repository.
OUTSIDE_REFERENCES = ("DESIGN.md", "REFERENCE.md", "../shared/papers", "shared/REFERENCE", "shared/DESIGN")


def test_code_and_docs_cite_only_what_the_repository_holds():
    citing = [f"{path.relative_to(PROJECT).as_posix()}: {needle}"
              for folder in (PACKAGE_DIR, PROJECT / "docs") for path in sorted(folder.rglob("*"))
              if path.suffix in {".py", ".md"}
              for needle in OUTSIDE_REFERENCES if needle in path.read_text(encoding="utf-8")]
    assert citing == []
