"""Fuzzing the experiment loader: random mutations of the shipped experiment files load or fail in one line.

Each mutation parses a shipped file, changes one place (a value replaced by another type, nan, a negative,
a huge number, an empty string, a list, a path; a key deleted, duplicated or renamed; two values
swapped), writes the YAML back and loads it. `load_experiment` must either succeed or raise ConfigError
with a one-line message; any other exception is a bug the fuzz found. The seed and the count are fixed,
so a failure repeats; XATTN_FUZZ_MUTATIONS runs a longer fuzz by hand.
"""

import os
import random

import pytest
import yaml

from support import EXPERIMENTS, places

from xattn_ray.errors import ConfigError
from xattn_ray.study.config import load_experiment

SHIPPED = ["quickstart", "multi30k", "wmt-paper", "codeswitch", "codeswitch-synthetic"]
MUTATIONS = int(os.environ.get("XATTN_FUZZ_MUTATIONS", "300"))

REPLACEMENTS = [float("nan"), float("inf"), -1, -5.5, 0, 10**30, 1e300, "", "../../x", "a/b", "..", [], [1, 2],
                {}, {"a": 1}, None, True, "x" * 300, "\n", 2**40, 0.5, 1, "tgt", "*", "la-la", [[1, 2]]]


def container(data, path):
    for part in path[:-1]:
        data = data[part]
    return data


def mutate(data, rng: random.Random) -> str:
    """Change one random place of `data` in place; says what it did."""
    path, value = rng.choice([p for p in places(data) if p[0]])
    parent, last = container(data, path), path[-1]
    kind = rng.choice(["replace", "replace", "replace", "delete", "rename", "swap", "wrap", "duplicate"])
    if kind == "replace":
        parent[last] = rng.choice(REPLACEMENTS)
    elif kind == "delete":
        del parent[last]
    elif kind == "rename" and isinstance(parent, dict):
        parent[rng.choice(["name", "pair", "train", "seed", "lines", "x", 1, None])] = parent.pop(last)
    elif kind == "swap":
        other_path, other = rng.choice(list(places(data))[1:])
        if not other_path[: len(path)] == path and not path[: len(other_path)] == other_path:
            parent[last], container(data, other_path)[other_path[-1]] = other, value
    elif kind == "wrap":
        parent[last] = [value]
    elif kind == "duplicate" and isinstance(parent, list):
        parent.append(value)
    return f"{kind} at {path}"


@pytest.mark.parametrize("name", SHIPPED)
def test_mutated_shipped_experiments_load_or_fail_in_one_line(tmp_path, name):
    rng = random.Random(f"fuzz/{name}")
    original = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
    path = tmp_path / f"{name}.yaml"  # beside no data: load_experiment reads no data files
    for i in range(MUTATIONS // len(SHIPPED)):
        data = yaml.safe_load(yaml.safe_dump(original))
        what = [mutate(data, rng) for _ in range(rng.choice([1, 1, 2, 3]))]
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        try:
            load_experiment(path)
        except ConfigError as err:
            assert "\n" not in str(err) and len(str(err)) < 1000, (what, str(err))
        except Exception as err:  # noqa: BLE001 - anything else is what the fuzz looks for
            pytest.fail(f"mutation {i} of {name} ({'; '.join(what)}): {type(err).__name__}: {err}")
