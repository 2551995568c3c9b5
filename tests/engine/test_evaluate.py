"""sacreBLEU scores of test sets: the same numbers and signatures as sacreBLEU, and checked inputs."""

from __future__ import annotations

import dataclasses
import importlib.util
import random

import pytest
import sacrebleu
import torch

from xattn_ray.engine.decode import translate
from xattn_ray.engine.evaluate import Score, ScoringError, bleu, chrf, score_test_set
from xattn_ray.engine.model import Transformer, preset_config
from xattn_ray.engine.tokenizer import TokenizerOptions, train_tokenizer

REFERENCES = [
    "A man in a blue shirt is standing on a ladder.",
    "Two dogs play in the snow, don't they?",
    "The girl's bicycle is RED.",
]
HYPOTHESES = [
    "A man in a blue shirt stands on a ladder.",
    "Two dogs are playing in snow, don't they?",
    "The girl's bike is red.",
]


def test_references_against_themselves_score_100() -> None:
    assert bleu(REFERENCES, REFERENCES).score == pytest.approx(100)
    assert chrf(REFERENCES, REFERENCES).score == pytest.approx(100)


def test_scores_are_sacrebleus_with_its_default_signature() -> None:
    expected_bleu = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score
    expected_chrf = sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score
    signature = f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"
    assert bleu(HYPOTHESES, REFERENCES) == Score("BLEU", expected_bleu, signature)
    assert 0 < expected_bleu < 100
    chrf_score = chrf(HYPOTHESES, REFERENCES)
    assert (chrf_score.name, chrf_score.score) == ("chrF", expected_chrf)
    assert chrf_score.signature.startswith("nrefs:1|case:mixed|") and "nc:6" in chrf_score.signature


def test_bleu_is_case_sensitive_and_scores_detokenised_text() -> None:
    assert bleu(["The bicycle is RED."], ["The bicycle is red."]).score < 100
    # 13a splits the punctuation off, so glued and spaced punctuation score alike
    assert bleu(["Two dogs, don't they?"], ["Two dogs , don't they ?"]).score == pytest.approx(100)


# A Chinese reference and a translation with one word changed (读 -> 看, "read" -> "look at") and the
# full stop of the second sentence left out; Chinese writes no spaces between words.
CHINESE_REFERENCES = ["我们今天下午去公园散步。", "他每天晚上都喜欢读书。"]
CHINESE_HYPOTHESES = ["我们今天下午去公园散步。", "他每天晚上都喜欢看书"]


def test_a_chinese_target_is_scored_with_sacrebleus_zh_tokenizer() -> None:
    chinese = bleu(CHINESE_HYPOTHESES, CHINESE_REFERENCES, "zh")
    assert chinese.signature == f"nrefs:1|case:mixed|eff:no|tok:zh|smooth:exp|version:{sacrebleu.__version__}"
    assert chinese.score == pytest.approx(sacrebleu.corpus_bleu(CHINESE_HYPOTHESES, [CHINESE_REFERENCES],
                                                                tokenize="zh").score)
    # 13a sees each unspaced sentence as one word, so one changed character loses the whole sentence
    unsegmented = bleu(CHINESE_HYPOTHESES, CHINESE_REFERENCES)
    assert "|tok:13a|" in unsegmented.signature and unsegmented.score < chinese.score - 10
    assert bleu(CHINESE_HYPOTHESES, CHINESE_REFERENCES, "zh_tw") == chinese  # a code's first part names the language


@pytest.mark.parametrize("language", ["en", "de", "fr", "cs", "pv"])
def test_other_targets_keep_the_13a_tokenizer_and_the_same_scores(language) -> None:
    signature = f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"
    expected = Score("BLEU", sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score, signature)
    assert bleu(HYPOTHESES, REFERENCES, language) == expected


@pytest.mark.skipif(importlib.util.find_spec("MeCab") is not None, reason="MeCab is installed: ja targets score")
def test_a_japanese_target_without_mecab_is_one_line_saying_what_to_install() -> None:
    with pytest.raises(ScoringError) as info:
        bleu(["猫が寝ている。"], ["猫が寝ている。"], "ja")
    assert str(info.value) == ("BLEU of 'ja' translations uses sacreBLEU's ja-mecab tokenizer, whose packages are not "
                               'installed: pip install "sacrebleu[ja]"')


def test_scores_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        bleu(REFERENCES, REFERENCES).score = 0.0  # type: ignore[misc]


@pytest.mark.parametrize("metric", [bleu, chrf])
def test_hypotheses_and_references_must_pair_up(metric) -> None:
    with pytest.raises(ValueError, match="3 hypotheses but 2 references"):
        metric(HYPOTHESES, REFERENCES[:2])
    with pytest.raises(ValueError, match="no sentences to score"):
        metric([], [])


def made_up_sentences(seed: int, count: int = 300) -> list[str]:
    rng = random.Random(seed)
    syllables = ["ba", "de", "fi", "go", "ku", "la", "me", "no", "pu", "ri"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(60)]
    return [" ".join(rng.choices(words, k=rng.randint(2, 10))).capitalize() + "." for _ in range(count)]


def random_translator(tmp_path, target_language: str):
    """Real SentencePiece models of made-up text (source `xx`) and a random tiny model between them."""
    src_tokenizer = train_tokenizer("xx", made_up_sentences(1), TokenizerOptions(vocab_size=120), tmp_path)
    tgt_tokenizer = train_tokenizer(target_language, made_up_sentences(2), TokenizerOptions(vocab_size=120), tmp_path)
    torch.manual_seed(0)
    return src_tokenizer, tgt_tokenizer, Transformer(preset_config("tiny", src_tokenizer.vocab_size,
                                                                   tgt_tokenizer.vocab_size))


def test_score_test_set_translates_and_scores(tmp_path) -> None:
    src_tokenizer, tgt_tokenizer, model = random_translator(tmp_path, "yy")
    sources = made_up_sentences(3, count=10)
    translations = translate(model, src_tokenizer, tgt_tokenizer, sources, beam=3)

    # decoding is deterministic, so the same translations as references score 100
    result = score_test_set(model, src_tokenizer, tgt_tokenizer, sources, translations, beam=3)
    assert result.hypotheses == translations
    assert result.bleu.score == pytest.approx(100) and result.chrf.score == pytest.approx(100)
    assert result.sentences_per_second == pytest.approx(len(sources) / result.seconds)

    references = made_up_sentences(4, count=10)
    result = score_test_set(model, src_tokenizer, tgt_tokenizer, sources, references, beam=3)
    assert result.bleu == bleu(translations, references) and result.chrf == chrf(translations, references)

    with pytest.raises(ValueError, match="10 source sentences but 9 references"):
        score_test_set(model, src_tokenizer, tgt_tokenizer, sources, references[:9])


def test_score_test_set_scores_in_the_language_of_its_target_tokenizer(tmp_path) -> None:
    src_tokenizer, zh_tokenizer, model = random_translator(tmp_path, "zh")
    sources = made_up_sentences(3, count=4)
    result = score_test_set(model, src_tokenizer, zh_tokenizer, sources, CHINESE_REFERENCES * 2, beam=1)
    assert "|tok:zh|" in result.bleu.signature
    assert result.bleu == bleu(result.hypotheses, CHINESE_REFERENCES * 2, "zh")
