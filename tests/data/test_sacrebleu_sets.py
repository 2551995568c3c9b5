"""sacreBLEU's test sets by name, read through sacreBLEU's own dataset API from its cache.

No test downloads: each lays a release into the test session's sacreBLEU cache as sacreBLEU leaves it
after a download (the archive and the SGML files it extracted: support.lay_sacrebleu_release), and
sacreBLEU itself turns them into the text files the corpus reads.
"""

from pathlib import Path

import pytest

from support import lay_sacrebleu_release, xattn_ray

from xattn_ray.data.corpus import resolve_corpus
from xattn_ray.data.options import CorpusConfig, LanguagePair
from xattn_ray.data.sacrebleu_sets import SacrebleuTestSet
from xattn_ray.errors import DataError

FR_EN = LanguagePair("fr", "en")
# Two documents of newstest2014 Fr-En: one first written in French, one in English.
DOCUMENTS = [("fr", [("Le chat  dort.", "The cat sleeps."), ("Il fait beau à Paris.", "The weather is nice in Paris.")]),
             ("en", [("Le chien court.", "The dog runs.")])]


def corpus_with(test: SacrebleuTestSet, tmp_path: Path):
    config = CorpusConfig(train={"fr": "train.fr", "en": "train.en"}, valid={"fr": "valid.fr", "en": "valid.en"},
                          test={"newstest": test})
    return resolve_corpus("wmt", config, tmp_path, tmp_path / "cache")


def test_a_sacrebleu_set_is_read_for_the_runs_pair_through_sacrebleus_cache(sacrebleu_cache, tmp_path):
    lay_sacrebleu_release(sacrebleu_cache, "wmt14", "fr-en", DOCUMENTS)
    corpus = corpus_with(SacrebleuTestSet("wmt14"), tmp_path)
    text = corpus.read_test("newstest", FR_EN)
    # sacreBLEU's own extraction: segments in order, inner spaces collapsed
    assert text.src == ["Le chat dort.", "Il fait beau à Paris.", "Le chien court."]
    assert text.tgt == ["The cat sleeps.", "The weather is nice in Paris.", "The dog runs."]
    assert text.origin == "sacreBLEU wmt14 fr-en"
    # sacreBLEU wrote its text files where its API says they live; a second read takes them as they are
    assert (sacrebleu_cache / "wmt14" / "wmt14.fr-en.src").read_text(encoding="utf-8").splitlines() == text.src
    (sacrebleu_cache / "wmt14" / "wmt14.fr-en.ref").write_text("Changed.\nLines.\nHere.\n")
    assert corpus.read_test("newstest", FR_EN).tgt == ["Changed.", "Lines.", "Here."]


def test_origlang_keeps_the_documents_first_written_in_that_language(sacrebleu_cache, tmp_path):
    lay_sacrebleu_release(sacrebleu_cache, "wmt14", "fr-en", DOCUMENTS)
    english = corpus_with(SacrebleuTestSet("wmt14", origlang="en"), tmp_path).read_test("newstest", FR_EN)
    assert (english.src, english.tgt) == (["Le chien court."], ["The dog runs."])
    assert english.origin == "sacreBLEU wmt14 fr-en, origlang en"
    others = corpus_with(SacrebleuTestSet("wmt14", origlang="non-en"), tmp_path).read_test("newstest", FR_EN)
    assert others.tgt == ["The cat sleeps.", "The weather is nice in Paris."]
    with pytest.raises(DataError, match=r"no document with origlang 'de' \(its documents' origlang: en, fr\)"):
        corpus_with(SacrebleuTestSet("wmt14", origlang="de"), tmp_path).read_test("newstest", FR_EN)


def test_a_reader_waits_while_another_process_has_sacrebleu_write_the_sets_files(sacrebleu_cache, tmp_path):
    """Trials starting together on one machine: the one holding the set's lock has sacreBLEU extract its files,
    the others wait for it rather than read a half-written file."""
    import fcntl
    import threading

    lay_sacrebleu_release(sacrebleu_cache, "wmt14", "fr-en", DOCUMENTS)
    corpus, read = corpus_with(SacrebleuTestSet("wmt14"), tmp_path), []
    reader = threading.Thread(target=lambda: read.append(corpus.read_test("newstest", FR_EN)))
    with open(sacrebleu_cache / ".xattn-ray.wmt14.lock", "a") as writing:  # another process, writing the set
        fcntl.flock(writing, fcntl.LOCK_EX)
        reader.start()
        reader.join(1.0)
        assert reader.is_alive() and not (sacrebleu_cache / "wmt14" / "wmt14.fr-en.src").exists()
    reader.join(30)
    assert read[0].tgt == ["The cat sleeps.", "The weather is nice in Paris.", "The dog runs."]


def test_a_pair_the_set_lacks_or_several_references_are_one_line_errors(sacrebleu_cache, tmp_path):
    with pytest.raises(DataError, match=r"'wmt14' has no pair ja-en \(it has: cs-en, en-cs, de-en"):
        corpus_with(SacrebleuTestSet("wmt14"), tmp_path).read_test("newstest", LanguagePair("ja", "en"))
    # wmt16/tworefs: two reference translations of each English sentence
    cache = sacrebleu_cache / "wmt16" / "tworefs"  # a set's folder is its name; its files' names use '_'
    cache.mkdir(parents=True)
    for field in ("src", "ref:0", "ref:1", "docid", "genre", "origlang"):  # sacreBLEU's text files, ':' as '-'
        (cache / f"wmt16_tworefs.en-fi.{field.replace(':', '-')}").write_text("x\n")
    with pytest.raises(DataError, match="'wmt16/tworefs' en-fi has 2 references; runs are scored against one"):
        corpus_with(SacrebleuTestSet("wmt16/tworefs"), tmp_path).read_test("newstest", LanguagePair("en", "fi"))


def test_without_network_or_files_validate_says_which_file_is_missing_and_where(tmp_path):
    """sacreBLEU tries to download the set; the proxy at a closed port makes that fail at once wherever the
    test runs (no mock: urllib's real connection is refused)."""
    experiment = tmp_path / "exp.yaml"
    for split in ("train", "valid"):
        for lang, line in (("ro", "o propoziție"), ("en", "a sentence")):
            (tmp_path / f"{split}.{lang}").write_text(f"{line}\n" * 5)
    experiment.write_text("name: offline\ncorpora:\n  ro-en:\n    train: {ro: train.ro, en: train.en}\n"
                          "    valid: {ro: valid.ro, en: valid.en}\n    test:\n      newstest: {sacrebleu: wmt16}\n"
                          "parents:\n  - {name: ro-en, pair: ro-en, corpus: ro-en}\n")
    cache = tmp_path / "sacrebleu"
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens there
    result = xattn_ray("validate", experiment, "--storage", tmp_path / "st", cwd=tmp_path,
                       env={"SACREBLEU": str(cache), "https_proxy": closed, "http_proxy": closed, "HTTPS_PROXY": closed,
                            "HTTP_PROXY": closed, "no_proxy": "", "NO_PROXY": ""})
    assert result.returncode == 2, result.stdout + result.stderr
    *log, message = result.stderr.strip().splitlines()  # the log says sacreBLEU tried; then the one-line error
    assert message.startswith("xattn-ray: error: ") and not any("error" in line for line in log), result.stderr
    assert f"sacreBLEU test set 'wmt16' ro-en: {cache / 'wmt16' / 'wmt16.ro-en.src'} is missing" in message
    assert "downloading https://data.statmt.org/wmt16/translation-task/test.tgz failed" in message
    assert f"sacreBLEU keeps its test sets in {cache} (the SACREBLEU environment variable)" in message
    assert "run once with network access" in message and "set SACREBLEU to a folder that holds them" in message


def test_a_run_is_scored_on_a_sacrebleu_set_with_its_target_languages_bleu_tokenizer(tmp_path):
    """An English-Chinese parent trained for a few updates and scored on newstest2018 En-Zh from sacreBLEU's
    cache: its result records the set's sentences, its references, and BLEU with tok:zh."""
    import json

    words = ["cat", "dog", "house", "river", "tree", "bird", "sun", "moon"]
    hanzi = ["猫", "狗", "房子", "河", "树", "鸟", "太阳", "月亮"]
    for split, count in (("train", 300), ("valid", 20)):
        rows = [i * 7 % len(words) for i in range(count)]
        (tmp_path / f"{split}.en").write_text("".join(f"the {words[r]} and the {words[r - 1]}\n" for r in rows))
        (tmp_path / f"{split}.zh").write_text("".join(f"{hanzi[r]}和{hanzi[r - 1]}\n" for r in rows))
    news = [(f"the {words[i]} and the {words[i - 1]}", f"{hanzi[i]}和{hanzi[i - 1]}") for i in range(6)]
    lay_sacrebleu_release(tmp_path / "sacrebleu", "wmt18", "en-zh", [("en", news)])
    experiment = tmp_path / "zh.yaml"
    experiment.write_text(
        "name: zh\ncorpora:\n  en-zh:\n    train: {en: train.en, zh: train.zh}\n    valid: {en: valid.en, zh: valid.zh}\n"
        "    test:\n      newstest2018: {sacrebleu: wmt18}\ntokenizer: {vocab_size: 40}\nmodel: {preset: tiny}\n"
        "train: {lr: 0.003, warmup_updates: 2, max_tokens: 600, max_updates: 6, validate_every: 3, patience: 0}\n"
        "evaluation: {beam: 1}\nparents:\n  - {name: en-zh, pair: en-zh, corpus: en-zh}\n")
    result = xattn_ray("train", experiment, "--run", "en-zh", "--storage", tmp_path / "st", cwd=tmp_path,
                       env={"SACREBLEU": str(tmp_path / "sacrebleu")})
    assert result.returncode == 0, result.stderr
    assert "newstest2018: BLEU" in result.stdout and "|tok:zh|" in result.stdout
    (summary,) = (tmp_path / "st" / "zh" / "runs").glob("*/result.json")
    test = json.loads(summary.read_text())["tests"]["newstest2018"]
    assert test["sentences"] == 6 and "|tok:zh|" in test["bleu_signature"]
    assert Path(test["references"]).read_text(encoding="utf-8").splitlines() == [zh for _, zh in news]
