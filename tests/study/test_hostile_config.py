"""Nothing a user types can corrupt a study: every value that can be checked before work starts is.

Each case writes a real, small experiment file (the tiny study of conftest.py, changed in one place) and
expects `load_experiment` to refuse it with one line `FILE:LINE: key.path: why`. A handful go through
the real `xattn-ray validate` command, which must exit 2 with that line and write nothing.
"""

import gzip
import re
from pathlib import Path

import pytest

from support import xattn_ray

from xattn_ray.data.corpus import MAX_LINE_CHARS, read_lines
from xattn_ray.errors import ConfigError, DataError
from xattn_ray.schema import MAX_FILE_BYTES
from xattn_ray.study.config import load_experiment

TRAIN = "train: {lr: 0.003, warmup_updates: 5, max_tokens: 600, max_updates: 12, validate_every: 6, patience: 0}"
SYNTH = "  synth:\n    synthetic: {languages: 2, sentences: 400, seed: 3, valid: 30, test: 20}\n"
FILES = "  synth:\n    languages: [la, lb, pv]\n    train: d/train.{lang}\n    valid: d/valid.{lang}\n    test:\n      t: d/test.{lang}\n"
CHILD = "  - {pair: lb-pv, parent: la-pv, lines: [250, 400]}"


def train(**fields) -> tuple[str, str]:
    """A replacement of the study's `train:` line with some fields added or overridden."""
    values = dict(item.split(": ") for item in TRAIN[len("train: {"):-1].split(", "))
    values.update(fields)
    return TRAIN, "train: {" + ", ".join(f"{key}: {value}" for key, value in values.items()) + "}"


def policy(text: str, grid: str = "[mine]") -> dict:
    """Overrides adding the user policy `mine: {text}` and a grid of `grid`."""
    return {"extra": f"policies: {{mine: {text}}}", "grid": f"grid: {{policies: {grid}}}"}


# (id, tiny_study overrides, text replacements, the key path in the message, a fragment of the reason)
CASES = [
    # Names that become folder or file names: one segment, no "..", not empty (issue 13, point 3).
    ("name-escapes-storage", {}, [("name: tiny", 'name: "../../x"')], "name", "cannot name a folder"),
    ("name-empty", {}, [("name: tiny", 'name: ""')], "name", "cannot name a folder"),
    ("name-dot", {}, [("name: tiny", 'name: "."')], "name", "cannot name a folder"),
    ("name-newline", {}, [("name: tiny", 'name: "a\\nb"')], "name", "cannot name a folder"),
    ("name-too-long", {}, [("name: tiny", "name: " + "x" * 41)], "name", "cannot name a folder"),
    ("parent-name", {}, [("{name: la-pv, pair", '{name: "../p", pair')], "parents[0].name", "cannot name"),
    ("child-name", {"children": CHILD[:-1] + ', name: "a/b"}'}, [], "children[0].name", "cannot name"),
    ("pair-language", {"children": CHILD.replace("lb-pv", '"l/b-pv"')}, [], "children[0].pair",
     "not a language code"),
    ("policy-name", {"extra": 'policies: {"x/y": {train: [new_embed]}}'}, [], "policies.x/y", "cannot name"),
    ("test-set-name", {}, [(SYNTH, FILES.replace(" t:", ' "../t":'))], "corpora.synth.test.../t",
     "cannot name"),
    ("corpus-language", {}, [(SYNTH, FILES.replace("[la, lb, pv]", '[la, "../lb", pv]'))],
     "corpora.synth.languages[1]", "not a language code"),
    # Training options: the experiment's, the children's, a parent's own, grid values, search domains.
    ("lr-nan", {}, [train(lr=".nan")], "train.lr", "finite number"),
    ("lr-inf", {}, [train(lr=".inf")], "train.lr", "finite number"),
    ("lr-negative", {}, [train(lr=-0.1)], "train.lr", "must be positive"),
    ("max-updates-negative", {}, [train(max_updates=-5)], "train.max_updates", "must not be negative"),
    ("max-seconds-negative", {}, [train(max_seconds=-1)], "train.max_seconds", "must not be negative"),
    ("warmup-zero", {}, [train(warmup_updates=0)], "train.warmup_updates", "stays 0"),
    ("warmup-negative", {}, [train(warmup_updates=-3)], "train.warmup_updates", "must not be negative"),
    ("label-smoothing", {}, [train(label_smoothing=3)], "train.label_smoothing", "[0, 1)"),
    ("adam-betas", {}, [train(adam_betas="[1.5, 2]")], "train.adam_betas[0]", "[0, 1)"),
    ("adam-eps", {}, [train(adam_eps=0)], "train.adam_eps", "must be positive"),
    ("patience-negative", {}, [train(patience=-1)], "train.patience", "must not be negative"),
    ("huge-integer", {}, [train(max_updates="9" * 30)], "train.max_updates", "out of range"),
    ("thousands-of-digits", {}, [train(max_updates="9" * 5000)], "train.max_updates", "cannot read"),
    ("child-train", {"extra": "child_train: {lr: -0.1, max_updates: 5}"}, [], "child_train.lr", "positive"),
    ("parent-own-train", {}, [("lines: [0, 250]}", "lines: [0, 250], train: {max_updates: -5}}")],
     "parents[0].train.max_updates", "must not be negative"),
    ("grid-lr-negative", {"grid": "grid: {policies: [xattn], options: {lr: [-0.001]}}"}, [],
     "grid.options.lr[0]", "must be positive"),
    ("grid-warmup-zero", {"grid": "grid: {policies: [xattn], options: {warmup_updates: [0]}}"}, [],
     "grid.options.warmup_updates[0]", "stays 0"),
    ("grid-duplicate-option", {"grid": "grid: {policies: [xattn], options: {lr: [0.001, 0.001]}}"}, [],
     "grid.options.lr", "lists a value twice"),
    ("grid-duplicate-size", {"grid": "grid: {policies: [xattn], sizes: [10, 10]}"}, [], "grid.sizes", "twice"),
    ("grid-seed-negative", {"grid": "grid: {policies: [xattn], seeds: [-1]}"}, [], "grid.seeds[0]", "seed"),
    ("search-lr-negative", {"extra": "search: {space: {lr: {uniform: [-0.1, 0.1]}}}"}, [],
     "search.space.lr.uniform[0]", "must be positive"),
    ("search-warmup-negative", {"extra": "search: {space: {warmup_updates: {randint: [-3, 5]}}}"}, [],
     "search.space.warmup_updates.randint[0]", "must not be negative"),
    ("search-dropout", {"extra": "search: {space: {dropout: {choice: [0.1, 1.5]}}}"}, [],
     "search.space.dropout.choice[1]", "[0, 1)"),
    # The model, evaluation, filters and resources.
    ("heads-divide-d-model", {"model": ", d_model: 32, heads: 7"}, [], "model.heads", "not divisible"),
    ("d-model-zero", {"model": ", d_model: 0"}, [], "model.d_model", "at least 1"),
    ("dropout", {"model": ", dropout: 1.5"}, [], "model.dropout", "[0, 1)"),
    ("encoder-layers", {"model": ", encoder_layers: -1"}, [], "model.encoder_layers", "at least 1"),
    ("eval-max-tokens", {}, [("max_tokens: 2000}", "max_tokens: 0}")], "evaluation.max_tokens", "at least 1"),
    ("length-ratio-nan", {"extra": "filters: {max_length_ratio: .nan}"}, [], "filters.max_length_ratio",
     "finite"),
    ("gpus-nan", {"extra": "resources: {gpus_per_worker: .nan}"}, [], "resources.gpus_per_worker", "finite"),
    ("gpus-fraction", {"extra": "resources: {gpus_per_worker: 1.5}"}, [], "resources.gpus_per_worker", "whole"),
    # Policies and children: the unchanged side is never touched (issue 13, point 4).
    ("pattern-matches-nothing", {"extra": 'policies: {mine: {train: [new_embed, "decoder.layers.*.crossattn.*"]}}'},
     [], "policies.mine.train[1]", "matches no parameter"),
    ("reinit-frozen-target", policy("{train: [new_embed, xattn], reinit: [tgt]}"), [], "policies.mine.reinit[0]",
     "re-initialise the unchanged target"),
    ("train-frozen-target", policy("{train: [tgt]}"), [], "policies.mine.train[0]", "only the unchanged target"),
    ("train-frozen-source", policy("{train: [new_embed, src]}"), [], "policies.mine.train[1]",
     "only the unchanged source"),
    ("child-changes-both", {"children": CHILD.replace("lb-pv", "lb-la")}, [], "children[0].pair", "both sides"),
    ("child-changes-neither", {"children": CHILD.replace("lb-pv", "la-pv").replace("}", ", name: again}")}, [],
     "children[0].pair", "no side changes"),
    # A child's parent that does not exist, while the analyses name that child (found by the fuzz).
    ("parent-missing-under-analyses", {"children": CHILD.replace("la-pv", "nope"),
                                       "extra": "analyses:\n  zeroshot:\n    - {body: lb-pv, embeddings: lb-pv}"},
     [], "children[0].parent", "no parent named 'nope'"),
    # What YAML itself allows.
    ("recursive-alias", {"extra": "x: &a [*a]"}, [], "x[0]", "refers to a list or mapping it is part of"),
    ("list-as-key", {"extra": "? [a, b]\n: 1"}, [], "<top level>", "a key must be a single value"),
    ("mapping-as-key", {"extra": "? {a: 1}\n: 1"}, [], "<top level>", "a key must be a single value"),
    ("bad-date", {}, [("name: tiny", "name: 2021-13-45")], "name", "cannot read"),
    ("deep-nesting", {"extra": "x: " + "[" * 60 + "]" * 60}, [], "x" + "[0]" * 49, "nested more than 50"),
    ("key-with-newline", {"extra": '"a\\nb": 1'}, [], "'a\\nb'", "unknown key"),
]


def write_case(folder: Path, tiny_study, overrides: dict, replacements: list) -> Path:
    path = tiny_study(folder, **overrides)
    text = path.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    path.write_text(text)
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    return message


@pytest.mark.parametrize("overrides, replacements, key, why", [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_hostile_value_is_one_line_at_its_key(tmp_path, tiny_study, overrides, replacements, key, why):
    path = write_case(tmp_path, tiny_study, overrides, replacements)
    message = config_error(path)
    assert re.match(rf"{re.escape(str(path))}:\d+: {re.escape(key)}: ", message), message
    assert why in message


def test_codeswitch_pretraining_options_are_checked(tmp_path, tiny_study):
    pretrain = "  pretrain: {lr: 0.002, warmup_updates: -3, max_updates: 6, validate_every: 3, patience: 0}"
    message = config_error(tiny_study(tmp_path, "codeswitch", pretrain=pretrain))
    assert ": codeswitch.pretrain.warmup_updates: must not be negative" in message


def test_codeswitch_languages_are_checked(tmp_path, tiny_study):
    path = tiny_study(tmp_path, "codeswitch")
    path.write_text(path.read_text().replace("sources: [la, lb, lc]", 'sources: [la, lb, "l/c"]'))
    assert ": codeswitch.sources[2]: 'l/c' is not a language code" in config_error(path)


def test_shipped_policies_and_names_still_load(tmp_path, tiny_study):
    """The checks refuse only what is wrong: every built-in policy on both kinds of child, grid options
    and a search with valid domains."""
    grid = "grid: {policies: [scratch, body, xattn, randxattn, embed, bitfit], options: {lr: [0.001, 0.002]}}"
    search = "search: {space: {lr: {loguniform: [0.0001, 0.01]}, warmup_updates: {randint: [1, 10]}}}"
    extra = 'policies: {ffn-only: {train: [new_embed, "decoder.layers.*.ffn.*"]}}\n' + search
    experiment = load_experiment(tiny_study(tmp_path, grid=grid, extra=extra))
    assert "ffn-only" in experiment.policies


@pytest.mark.parametrize("text, why", [
    # 10 aliases of 10 aliases ... nine levels deep: 10**9 values from a few hundred bytes.
    ("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)), "alias bomb"),
    ("a: &a {b: *a}\n", "an alias refers to a list or mapping it is part of"),
    ("x: " + "[" * 1500 + "]" * 1500 + "\n", "nested"),
    (b"name: caf\xe9\n", "not UTF-8"),
    ("# padding\n" * (MAX_FILE_BYTES // 10 + 1), "over 1,000,000 bytes"),
], ids=["billion-laughs", "self-referring-mapping", "deeper-than-python-recursion", "latin-1", "too-large"])
def test_hostile_yaml_fails_in_one_line(tmp_path, text, why):
    path = tmp_path / "exp.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    message = config_error(path)
    assert message.startswith(str(path)) and why in message


def test_a_gzip_bomb_is_refused_while_it_streams(tmp_path):
    line = tmp_path / "line.gz"  # one line of 2 M characters, from a 2 kB file
    line.write_bytes(gzip.compress(b"a" * (2 * MAX_LINE_CHARS)))
    with pytest.raises(DataError, match=rf"{re.escape(str(line))}:1: line longer than 1,000,000 characters"):
        read_lines(line)
    newlines = tmp_path / "newlines.gz"  # 20 M empty lines, from 20 kB
    newlines.write_bytes(gzip.compress(b"\n" * (20 << 20), compresslevel=1))
    with pytest.raises(DataError, match="inflates more than 100 times"):
        read_lines(newlines)


def test_long_lines_inside_the_cap_and_odd_endings_read_as_before(tmp_path):
    path = tmp_path / "text.gz"
    path.write_bytes(gzip.compress(("x" * 5000 + "\n\u2028é\r\nlast").encode()))
    assert read_lines(path) == ["x" * 5000, "\u2028é", "last"]


# The real command, for a representative few: exit 2, one line on stderr, nothing written.
CLI_CASES = ["name-escapes-storage", "reinit-frozen-target"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_validate_refuses_in_one_line_and_writes_nothing(tmp_path, tiny_study, case):
    _, overrides, replacements, key, why = next(c for c in CASES if c[0] == case)
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    path = write_case(folder, tiny_study, overrides, replacements)
    storage = folder / "storage"
    result = xattn_ray("validate", path, "--storage", storage, cwd=folder)
    assert result.returncode == 2, result.stderr
    assert re.fullmatch(rf"xattn-ray: error: {re.escape(str(path))}:\d+: {re.escape(key)}: [^\n]*{re.escape(why)}"
                        rf"[^\n]*\n", result.stderr), result.stderr
    assert not storage.exists() and sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", path.name]


def test_validate_refuses_a_directory_and_a_gzip_bomb_corpus(tmp_path, tiny_study):
    result = xattn_ray("validate", tmp_path, "--storage", tmp_path / "storage")
    assert result.returncode == 2
    assert result.stderr == f"xattn-ray: error: {tmp_path}: experiment file is a directory\n"
    path = write_case(tmp_path, tiny_study, {"children": CHILD}, [(SYNTH, FILES.replace("{lang}", "{lang}.gz"))])
    (tmp_path / "d").mkdir()
    for lang in ("la", "lb", "pv"):
        for split in ("train", "valid", "test"):
            (tmp_path / "d" / f"{split}.{lang}.gz").write_bytes(gzip.compress(b"a b\n" * 400))
    bomb = tmp_path / "d" / "valid.pv.gz"
    bomb.write_bytes(gzip.compress(b"a" * (2 * MAX_LINE_CHARS)))
    result = xattn_ray("validate", path, "--storage", tmp_path / "storage")
    assert result.returncode == 2
    assert result.stderr == f"xattn-ray: error: {bomb}:1: line longer than 1,000,000 characters\n"
