"""The experiment file's JSON Schema for editors: the committed file is what `xattn-ray schema` prints,
every shipped experiment validates against it, and on mutations of those experiments the schema agrees
with the loader about keys, types and choices."""

import copy
import random

import jsonschema
import pytest
import yaml

from support import EXPERIMENTS, places, xattn_ray

from xattn_ray.cli import main
from xattn_ray.errors import ConfigError
from xattn_ray.json_schema import json_schema
from xattn_ray.schema import Invalid, YamlDocument, build
from xattn_ray.study.config import Experiment, load_experiment

COMMITTED = EXPERIMENTS / "experiment.schema.json"
MODELINE = "# yaml-language-server: $schema=./experiment.schema.json"
SHIPPED = sorted(EXPERIMENTS.glob("*.yaml"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    """The schema as generated now (the committed file is checked against it below)."""
    schema = json_schema(Experiment, "experiment")
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_committed_schema_is_what_xattn_ray_schema_prints(tmp_path, capsys):
    printed = xattn_ray("schema")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == COMMITTED.read_text(encoding="utf-8"), (
        "experiments/experiment.schema.json is stale: regenerate it with "
        "`xattn-ray schema --out experiments/experiment.schema.json`")
    assert main(["schema", "--out", str(tmp_path / "experiment.schema.json")]) == 0
    assert (tmp_path / "experiment.schema.json").read_text(encoding="utf-8") == printed.stdout
    assert [path.name for path in tmp_path.iterdir()] == ["experiment.schema.json"]  # no temporary file left
    assert capsys.readouterr().out == ""
    assert main(["schema", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"xattn-ray: error: --out {tmp_path} is a folder: give a file name\n"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_every_shipped_experiment_names_the_schema_and_validates(path, validator):
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == MODELINE
    errors = [f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
              for error in validator.iter_errors(yaml.safe_load(text))]  # `${NAME}` values are strings here
    assert errors == []


QUICKSTART = EXPERIMENTS / "quickstart.yaml"


@pytest.mark.parametrize("change", [
    pytest.param(lambda data: data.update(nmae="x"), id="unknown-top-level-key"),
    pytest.param(lambda data: data["children"][0].update(polcy="xattn"), id="unknown-nested-key"),
    pytest.param(lambda data: data["grid"].update(seeds=["1"]), id="string-for-an-integer"),
    pytest.param(lambda data: data["train"].update(bf16="yes"), id="string-for-a-boolean"),
    pytest.param(lambda data: data["train"].update(schedule="cosine"), id="bad-enum"),
    pytest.param(lambda data: data["parents"][0].update(lines=[0]), id="short-pair-of-lines"),
    pytest.param(lambda data: data["parents"][0].pop("pair"), id="missing-required-key"),
    pytest.param(lambda data: data.update(name=None), id="null-for-a-string"),
])
def test_mistakes_fail_validation_as_they_fail_loading(change, validator):
    data = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    assert validator.is_valid(data)
    change(data)
    assert not validator.is_valid(data)
    with pytest.raises(ConfigError):
        build(Experiment, YamlDocument(QUICKSTART, data, {}))


def test_the_modeline_keeps_error_lines_those_of_the_file(tmp_path):
    """The schema comment is line 1 of each shipped file: errors count it like any other line."""
    lines = QUICKSTART.read_text(encoding="utf-8").splitlines(keepends=True)
    assert lines[0].rstrip("\n") == MODELINE
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("seeds:"))
    lines[at] = lines[at].replace("seeds:", "seds:")
    (tmp_path / "exp.yaml").write_text("".join(lines), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"exp\.yaml:{at + 1}: grid\.seds: unknown key"):
        load_experiment(tmp_path / "exp.yaml")


# -- the schema and the loader agree on mutated shipped experiments ----------------------------------

# Values a mutation puts somewhere: every JSON type, within the bounds the schema leaves to the loader
# (64-bit integers, finite numbers, integers without a decimal point).
REPLACEMENTS = [-1, -5.5, 0, 0.5, 1, 7, "", "x", "fr-en", "auto", [], [1, 2], [[1, 2]], ["x"], {}, {"a": 1},
                {"train": ["*"]}, None, True, False]
MUTATIONS_PER_FILE = 60


def mutate(data, rng: random.Random) -> str:
    """Change one random place of `data` in place: replace, delete, misspell a key, or wrap in a list."""
    path, value = rng.choice(list(places(data))[1:])  # the root excepted
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    kind = rng.choice(["replace", "replace", "replace", "delete", "misspell", "wrap"])
    if kind == "misspell" and isinstance(last, str):
        parent[last[:-1] + "x"] = parent.pop(last)
    elif kind == "delete":
        del parent[last]
    elif kind == "wrap":
        parent[last] = [value]
    else:
        kind = "replace"
        parent[last] = copy.deepcopy(rng.choice(REPLACEMENTS))
    return f"{kind} at {path}"


def loader_accepts_the_shape(data) -> bool:
    """Whether `build` gets past keys, types and choices: it loads, or fails only in a dataclass's
    `__post_init__` (a range or a relation between keys, which the schema leaves to the loader)."""
    try:
        build(Experiment, YamlDocument(QUICKSTART, data, {}))
    except ConfigError as err:
        return isinstance(err.__context__, Invalid)  # raised `from None` while handling the Invalid
    return True


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_on_mutated_experiments_the_schema_agrees_with_the_loader(path, validator):
    original = yaml.safe_load(path.read_text(encoding="utf-8"))
    rng = random.Random(f"schema/{path.name}")
    outcomes = set()
    for _ in range(MUTATIONS_PER_FILE):
        data = copy.deepcopy(original)
        what = mutate(data, rng)
        loader = loader_accepts_the_shape(data)
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(data)]
        assert (not errors) == loader, f"{path.name}, {what}: loader {'accepts' if loader else 'rejects'}; {errors}"
        outcomes.add(loader)
    assert outcomes == {True, False}  # both sides of the agreement were tried
