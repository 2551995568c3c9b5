"""sacreBLEU scores of test sets: the same numbers and signatures as sacreBLEU, and checked inputs."""

from __future__ import annotations

import dataclasses
import random

import pytest
import sacrebleu
import torch

from xattn_ray.engine.decode import translate
from xattn_ray.engine.evaluate import Score, bleu, chrf, score_test_set
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


def test_score_test_set_translates_and_scores(tmp_path) -> None:
    src_tokenizer = train_tokenizer("xx", made_up_sentences(1), TokenizerOptions(vocab_size=120), tmp_path)
    tgt_tokenizer = train_tokenizer("yy", made_up_sentences(2), TokenizerOptions(vocab_size=120), tmp_path)
    torch.manual_seed(0)
    model = Transformer(preset_config("tiny", src_tokenizer.vocab_size, tgt_tokenizer.vocab_size))
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
