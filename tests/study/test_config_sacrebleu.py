"""sacreBLEU test sets in the experiment file: checked at load against sacreBLEU's own list of sets and pairs
(nothing is downloaded or read), one line at the key at fault; named in run hashes by what identifies them."""

import importlib.util
from pathlib import Path

import pytest

from xattn_ray.errors import ConfigError
from xattn_ray.study.config import load_experiment
from xattn_ray.study.runs import config_hash
from xattn_ray.study.spec import RunSpec

EXPERIMENT = """\
name: news
corpora:
  fr-en:
    train: {fr: data/train.fr, en: data/train.en}
    valid: {fr: data/valid.fr, en: data/valid.en}
    test:
      newstest: TEST
parents:
  - {name: fr-en, pair: fr-en, corpus: fr-en}
"""


def load(tmp_path: Path, test: str, experiment: str = EXPERIMENT):
    path = tmp_path / "news.yaml"
    path.write_text(experiment.replace("TEST", test))
    return load_experiment(path)


def error_of(tmp_path: Path, test: str, experiment: str = EXPERIMENT) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, test, experiment)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_a_sacrebleu_set_loads_and_a_wrong_one_is_one_line_at_its_key(tmp_path):
    test = load(tmp_path, "{sacrebleu: wmt14, origlang: fr}").corpora["fr-en"].test["newstest"]
    assert (test.sacrebleu, test.origlang) == ("wmt14", "fr")
    unknown = error_of(tmp_path, "{sacrebleu: wmt41}")
    assert unknown.startswith(f"{tmp_path / 'news.yaml'}:7: corpora.fr-en.test.newstest.sacrebleu: sacreBLEU has no "
                              f"test set 'wmt41' (did you mean ")
    assert unknown.endswith("? `sacrebleu --list` lists them)")
    assert "newstest.orglang: unknown key (did you mean 'origlang'?)" in error_of(
        tmp_path, "{sacrebleu: wmt14, orglang: fr}")
    assert "newstest.origlang: sacreBLEU's iwslt17 does not record its documents' original language" in error_of(
        tmp_path, "{sacrebleu: iwslt17, origlang: fr}")
    # a mapping without `sacrebleu` is still files per language, with their own errors
    assert "corpora.fr-en.test.newstest.fr: expected a string, got 1" in error_of(tmp_path, "{fr: 1, en: e}")


def test_a_pair_the_set_does_not_have_is_one_line_listing_the_pairs_it_has(tmp_path):
    ro = EXPERIMENT.replace("fr", "ro")
    message = error_of(tmp_path, "{sacrebleu: wmt14}", ro)
    assert message.startswith(f"{tmp_path / 'news.yaml'}:7: corpora.ro-en.test.newstest.sacrebleu: run 'ro-en' "
                              f"translates ro-en: sacreBLEU test set 'wmt14' has no pair ro-en (it has: cs-en, en-cs, ")
    assert "en-fr, fr-en, en-hi" in message
    assert load(tmp_path, "{sacrebleu: wmt16}", ro).corpora["ro-en"].test["newstest"].sacrebleu == "wmt16"
    # the pair a zero-shot analysis translates is checked too: body fr-cs + the de-en child's source = de-cs
    zeroshot = ("name: zs\ncorpora:\n  toy:\n    languages: [fr, en, de, cs]\n    train: data/train.{lang}\n"
                "    valid: data/valid.{lang}\n    test:\n      t1: data/test.{lang}\n"
                "  news:\n    train: {de: t.de, cs: t.cs}\n    valid: {de: t.de, cs: t.cs}\n    test: {newstest: TEST}\n"
                "parents:\n  - {name: fr-en, pair: fr-en, corpus: toy}\n"
                "children:\n  - {pair: de-en, parent: fr-en}\n  - {pair: fr-cs, parent: fr-en}\n"
                "analyses:\n  zeroshot: [{body: fr-cs, embeddings: de-en, corpus: news}]\n")
    assert load(tmp_path, "{sacrebleu: wmt19}", zeroshot).analyses.zeroshot[0].corpus == "news"  # it has de-cs
    assert ("corpora.news.test.newstest.sacrebleu: zero-shot fr-cs + de-en translates de-cs: sacreBLEU test set "
            "'wmt14' has no pair de-cs") in error_of(tmp_path, "{sacrebleu: wmt14}", zeroshot)


def test_a_code_switching_study_refuses_sacrebleu_sets_which_are_not_multi_parallel(tmp_path):
    codeswitch = ("name: cs\ncorpora:\n  multi:\n    languages: [fr, de, en]\n    train: data/train.{lang}\n"
                  "    valid: data/valid.{lang}\n    test:\n      news: TEST\n"
                  "codeswitch: {corpus: multi, sources: [fr, de], pivot: en, train_pairs: [[fr, de]]}\n"
                  "grid: {policies: [body]}\n")
    assert load(tmp_path, "data/test.{lang}", codeswitch).codeswitch.pivot == "en"
    assert "corpora.multi.test.news.sacrebleu: a code-switching study needs multi-parallel test sets" in error_of(
        tmp_path, "{sacrebleu: wmt14}", codeswitch)


def test_a_sacrebleu_set_enters_the_run_hash_by_name_documents_and_release(tmp_path, sacrebleu_cache):
    """Hashes are computed from sacreBLEU's record of the set alone: the empty cache stays empty."""
    parent = RunSpec("parent", "fr-en", 1)
    hashes = {test: config_hash(load(tmp_path, test), parent)
              for test in ("{sacrebleu: wmt14}", "{sacrebleu: wmt14/full}", "{sacrebleu: wmt14, origlang: fr}",
                           "{fr: t.fr, en: t.en}")}
    assert len(set(hashes.values())) == 4
    assert config_hash(load(tmp_path, "{sacrebleu: wmt14}"), parent) == hashes["{sacrebleu: wmt14}"]
    test = load(tmp_path, "{sacrebleu: wmt14}").corpora["fr-en"].test["newstest"]
    assert test.identity() == {"sacrebleu": "wmt14", "origlang": None, "md5": ["84c597844c1542e29c2aff23aaee4310"]}
    assert not list(sacrebleu_cache.iterdir())


@pytest.mark.skipif(importlib.util.find_spec("MeCab") is not None, reason="MeCab is installed: ja targets score")
def test_a_japanese_target_without_mecab_is_one_line_at_the_pair_saying_what_to_install(tmp_path):
    """sacreBLEU scores Japanese with its ja-mecab tokenizer, whose packages this machine does not have."""
    ja = EXPERIMENT.replace("fr-en", "fr-ja").replace("en: data/", "ja: data/").replace(".en}", ".ja}")
    message = error_of(tmp_path, "{fr: t.fr, ja: t.ja}", ja)
    assert message == (f"{tmp_path / 'news.yaml'}:9: parents[0].pair: BLEU of 'ja' translations uses sacreBLEU's "
                       f'ja-mecab tokenizer, whose packages are not installed: pip install "sacrebleu[ja]"')
