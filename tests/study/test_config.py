"""The experiment file: strict keys, types and references, each error one line naming file, line and key."""

from pathlib import Path

import pytest

from support import EXPERIMENTS

from xattn_ray.data.options import LanguagePair
from xattn_ray.study.config import load_experiment
from xattn_ray.errors import ConfigError

VALID = """\
name: demo
corpora:
  toy:
    languages: [fr, en, de]
    train: data/train.{lang}
    valid: data/valid.{lang}
    test:
      t1: data/test.{lang}
parents:
  - name: fr-en
    pair: fr-en
    corpus: toy
    lines: [0, 10]
children:
  - {pair: de-en, parent: fr-en, lines: [10, 20]}
  - {pair: fr-de, parent: fr-en, size: 5}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_experiment(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_file_loads_with_types_and_resolved_defaults(tmp_path):
    experiment = load_experiment(write(tmp_path, VALID))
    assert experiment.name == "demo"
    assert experiment.parents[0].lines == (0, 10)
    assert experiment.parents[0].language_pair == LanguagePair("fr", "en")
    assert [c.run_name for c in experiment.children] == ["de-en", "fr-de"]
    assert experiment.child_corpus(experiment.children[1]) == "toy"
    assert experiment.tokenizer.vocab_size == "auto"
    assert experiment.filters.max_tokens == 250
    assert experiment.base_dir == tmp_path.resolve()


def test_unknown_key_names_file_line_full_path_and_suggestion(tmp_path):
    text = VALID.replace("{pair: fr-de, parent: fr-en, size: 5}", "{pair: fr-de, parent: fr-en, polcy: xattn}")
    message = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'exp.yaml'}:16: children[1].polcy: unknown key")


def test_unknown_nested_key_in_a_mapping_section(tmp_path):
    message = error_of(tmp_path, VALID + "tokenizer: {vocab_sise: 8000}\n")
    assert ":17: tokenizer.vocab_sise: unknown key (did you mean 'vocab_size'?)" in message


def test_wrong_type_is_reported_at_its_key(tmp_path):
    message = error_of(tmp_path, VALID.replace("lines: [0, 10]", "lines: [0, ten]"))
    assert ":13: parents[0].lines[1]: expected an integer, got 'ten'" in message


def test_bool_is_not_an_integer(tmp_path):
    message = error_of(tmp_path, VALID + "filters: {max_tokens: true}\n")
    assert "filters.max_tokens: expected an integer, got True" in message


def test_missing_required_key(tmp_path):
    message = error_of(tmp_path, VALID.replace("    pair: fr-en\n", ""))
    assert "parents[0].pair: missing required key" in message


def test_duplicate_key(tmp_path):
    message = error_of(tmp_path, VALID.replace("name: demo\n", "name: demo\nname: again\n"))
    assert ":2: name: duplicate key" in message


def test_yaml_syntax_error_names_the_line(tmp_path):
    message = error_of(tmp_path, VALID + "children: [\n")
    assert "invalid YAML" in message and str(tmp_path / "exp.yaml") in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="experiment file not found"):
        load_experiment(tmp_path / "nope.yaml")


def test_child_must_name_an_existing_parent(tmp_path):
    message = error_of(tmp_path, VALID.replace("{pair: de-en, parent: fr-en", "{pair: de-en, parent: fr-xx"))
    assert "children[0].parent: no parent named 'fr-xx' (parents: fr-en)" in message


def test_run_corpus_and_languages_must_exist(tmp_path):
    assert "parents[0].corpus: no corpus named 'other'" in error_of(
        tmp_path, VALID.replace("corpus: toy", "corpus: other"))
    assert "children[0].pair: corpus 'toy' has no language 'cs'" in error_of(
        tmp_path, VALID.replace("{pair: de-en", "{pair: cs-en"))


def test_unknown_test_set(tmp_path):
    message = error_of(tmp_path, VALID.replace("lines: [0, 10]", "lines: [0, 10]\n    test_sets: [t2]"))
    assert "parents[0].test_sets: corpus 'toy' has no test set 't2' (it has: t1)" in message


def test_bad_pair_and_slice(tmp_path):
    assert "parents[0].pair: expected two different languages" in error_of(
        tmp_path, VALID.replace("pair: fr-en", "pair: fren"))
    assert "parents[0].lines: expected [start, end) with 0 <= start < end" in error_of(
        tmp_path, VALID.replace("lines: [0, 10]", "lines: [10, 0]"))


def test_duplicate_run_names(tmp_path):
    message = error_of(tmp_path, VALID.replace("{pair: fr-de, parent: fr-en, size: 5}",
                                               "{pair: de-en, parent: fr-en, size: 5}"))
    assert "children[1]: run name 'de-en' is used twice" in message


def test_template_needs_languages_and_corpus_needs_splits(tmp_path):
    assert "corpora.toy.languages: `train` is a {lang} template" in error_of(
        tmp_path, VALID.replace("    languages: [fr, en, de]\n", ""))
    assert "corpora.toy.valid: a single path must contain {lang}" in error_of(
        tmp_path, VALID.replace("valid: data/valid.{lang}", "valid: data/valid.txt"))
    assert "corpora.toy: a corpus needs `valid` files" in error_of(
        tmp_path, VALID.replace("    valid: data/valid.{lang}\n", ""))


def test_synthetic_corpus_names_no_files(tmp_path):
    text = VALID.replace("    languages: [fr, en, de]\n", "    synthetic: {languages: 2}\n")
    assert "corpora.toy.train: a synthetic corpus names no files" in error_of(tmp_path, text)


def test_a_synthetic_family_that_cannot_be_generated_is_refused_at_its_key(tmp_path):
    text = VALID.replace("""    languages: [fr, en, de]
    train: data/train.{lang}
    valid: data/valid.{lang}
    test:
      t1: data/test.{lang}
""", "    synthetic: {languages: 2, kinship: 1.5}\n")
    assert "corpora.toy.synthetic: synthetic family: kinship must be a number from 0 to 1" in error_of(tmp_path, text)


def test_environment_variables_in_paths(tmp_path, monkeypatch):
    text = VALID.replace("data/train.{lang}", "${MY_DATA:-fallback}/train.{lang}").replace(
        "data/valid.{lang}", "${MY_DATA}/valid.{lang}")
    monkeypatch.delenv("MY_DATA", raising=False)
    assert "corpora.toy.valid: environment variable MY_DATA is not set" in error_of(tmp_path, text)
    monkeypatch.setenv("MY_DATA", "/srv/corpora")
    experiment = load_experiment(write(tmp_path, text))
    assert experiment.corpora["toy"].train == "/srv/corpora/train.{lang}"
    assert experiment.corpora["toy"].valid == "/srv/corpora/valid.{lang}"


@pytest.mark.parametrize("name", ["quickstart.yaml", "multi30k.yaml", "opus-mt.yaml"])
def test_shipped_experiments_load(name):
    experiment = load_experiment(EXPERIMENTS / name)
    assert experiment.parents and experiment.children


def test_the_plan_of_a_searched_grid_counts_search_trials_at_the_first_seed_then_confirmations(tmp_path):
    from xattn_ray.study.transfer import Transfer
    grid = "grid: {policies: [body, xattn], seeds: [1, 2, 3]}\n"
    plain = load_experiment(write(tmp_path, VALID + grid))
    assert Transfer().plan_lines(plain)[0].endswith("x 3 seeds")
    searched = load_experiment(write(tmp_path, VALID + grid
                                     + "search: {space: {lr: {choice: [0.001, 0.002]}}, samples: 2}\n"))
    cells = len(searched.children) * len(searched.grid.policies)
    line = Transfer().plan_lines(searched)[0]
    assert f"then {cells * 2} search trials" in line and "at seed 1" in line
    assert f"then {cells * 2} confirmation runs" in line and "with seeds 2, 3" in line


def test_a_pretrained_parent_is_a_folder_or_a_hub_id_and_takes_no_training_options(tmp_path):
    def pretrained(model: str) -> str:
        return VALID.replace("    lines: [0, 10]\n", f"    pretrained: {model}\n")

    (tmp_path / "models" / "opus").mkdir(parents=True)
    folder = load_experiment(write(tmp_path, pretrained("models/opus"))).parents[0].pretrained
    assert folder == str(tmp_path / "models" / "opus")  # relative to the experiment file
    hub = load_experiment(write(tmp_path, pretrained("Helsinki-NLP/opus-mt-fr-en"))).parents[0]
    assert hub.pretrained == "Helsinki-NLP/opus-mt-fr-en"
    missing = error_of(tmp_path, pretrained("./elsewhere"))  # names where it looked
    assert f"parents[0].pretrained: {tmp_path / 'elsewhere'}: no such folder" in missing
    assert "parents[0].lines: a pretrained parent is imported, not trained" in error_of(
        tmp_path, VALID.replace("    lines: [0, 10]\n", "    lines: [0, 10]\n    pretrained: models/opus\n"))
    assert "policies.mine.embed_init: must be one of random, shared, mean" in error_of(
        tmp_path, VALID + "policies:\n  mine: {train: [new_embed, xattn], embed_init: parent}\n")


@pytest.mark.parametrize("name, digest", [("quickstart.yaml", "1f7d9d925c99123e"),
                                          ("codeswitch-synthetic.yaml", "7ac6f5f221b36af9")])
def test_the_run_ids_of_the_shipped_synthetic_studies_stay_as_they_were(name, digest):
    """A new option must not change the hash of runs that do not use it: a changed run id retrains a
    finished study. (Studies on files hash their absolute paths, so only the synthetic ones are pinned.)"""
    import hashlib

    from xattn_ray.study.kinds import kind_of
    from xattn_ray.study.runs import run_id

    experiment = load_experiment(EXPERIMENTS / name)
    ids = [run_id(experiment, spec) for stage in kind_of(experiment).stages(experiment) for spec in stage.specs]
    assert hashlib.sha256(" ".join(ids).encode()).hexdigest()[:16] == digest
