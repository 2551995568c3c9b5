"""Test-set scores with sacreBLEU: BLEU and chrF of detokenised translations against raw references.

sacreBLEU tokenises hypotheses and references itself (BLEU: case-sensitive, exponential smoothing, the
tokeniser of the target language; chrF: character 6-grams), so scores are comparable across papers and
subword vocabularies. BLEU is given the target language (`trg_lang`), as sacreBLEU's command line does
for its own test sets: Chinese targets are split into characters (`zh`), Japanese and Korean ones into
MeCab's words (`ja-mecab`, `ko-mecab`, which need `pip install "sacrebleu[ja]"` or `"sacrebleu[ko]"`),
every other language gets the `13a` tokeniser of WMT's mteval. Each score carries sacreBLEU's
signature, which records those settings (`tok:zh`) and the sacreBLEU version; report it with the number.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.metrics.base import Metric

from xattn_ray.engine.decode import translate, translate_ids
from xattn_ray.engine.model import Transformer
from xattn_ray.engine.tokenizer import Tokenizer
from xattn_ray.errors import XattnError


class ScoringError(XattnError):
    """sacreBLEU cannot score a target language here: its tokeniser needs packages that are not installed."""


@dataclass(frozen=True)
class Score:
    """One corpus-level metric: e.g. Score("BLEU", 34.2, "nrefs:1|case:mixed|eff:no|tok:13a|...")."""

    name: str
    score: float
    signature: str


@dataclass(frozen=True)
class TestResult:
    """The scores and translations of one test set, and how long translating it took."""

    bleu: Score
    chrf: Score
    hypotheses: list[str]
    seconds: float  # wall-clock time of translation (not scoring)

    @property
    def sentences_per_second(self) -> float:
        return len(self.hypotheses) / self.seconds


def bleu(hypotheses: Sequence[str], references: Sequence[str], target_language: str = "") -> Score:
    """Corpus BLEU of detokenised `hypotheses` in `target_language` against one raw reference each (sacreBLEU's
    defaults, with the tokeniser sacreBLEU chooses for that language)."""
    return _corpus_score("BLEU", bleu_metric(target_language), hypotheses, references)


# The target languages whose sacreBLEU tokeniser needs packages of its own, and that tokeniser; each
# language is also the name of sacreBLEU's extra that installs them (`pip install "sacrebleu[ja]"`).
_MECAB_TOKENIZERS = {"ja": "ja-mecab", "ko": "ko-mecab"}


def bleu_metric(target_language: str) -> BLEU:
    """sacreBLEU's BLEU for translations into `target_language` (a code such as `zh`; `zh_tw` counts as `zh`).

    A tokeniser whose packages are missing (MeCab's, for `ja` and `ko`) is a one-line ScoringError that says
    what to install (an experiment file's targets are checked for it when the file loads)."""
    language = target_language.split("_")[0]
    try:
        return BLEU(trg_lang=language)
    except (ImportError, RuntimeError):  # sacreBLEU imports a tokeniser's packages when it first builds it
        if language not in _MECAB_TOKENIZERS:
            raise
        raise ScoringError(f"BLEU of {target_language!r} translations uses sacreBLEU's "
                           f"{_MECAB_TOKENIZERS[language]} tokenizer, whose packages are not installed: "
                           f'pip install "sacrebleu[{language}]"') from None


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> Score:
    """Corpus chrF of detokenised `hypotheses` against one raw reference each (sacreBLEU defaults)."""
    return _corpus_score("chrF", CHRF(), hypotheses, references)


def score_test_set(model: Transformer, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer,
                   sources: Sequence[str], references: Sequence[str], beam: int = 5,
                   length_penalty: float = 1.2, max_tokens: int = 4096, max_len_a: float = 1.2,
                   max_len_b: int = 10) -> TestResult:
    """Translate `sources` (raw text) and score the translations against `references`."""
    _check_parallel(sources, references, "source sentences")
    metric = bleu_metric(tgt_tokenizer.language)  # a missing tokeniser fails before decoding, not after
    start = time.perf_counter()
    hypotheses = translate(model, src_tokenizer, tgt_tokenizer, sources, beam=beam,
                           length_penalty=length_penalty, max_tokens=max_tokens, max_len_a=max_len_a,
                           max_len_b=max_len_b)
    seconds = time.perf_counter() - start
    return TestResult(_corpus_score("BLEU", metric, hypotheses, references), chrf(hypotheses, references),
                      hypotheses, seconds)


def score_encoded(model: Transformer, tgt_tokenizer: Tokenizer, sources: Sequence[list[int]],
                  segments: Sequence[list[int]] | None, references: Sequence[str], beam: int = 5,
                  length_penalty: float = 1.2, max_tokens: int = 4096, max_len_a: float = 1.2,
                  max_len_b: int = 10) -> TestResult:
    """Translate encoded `sources` (with their segment ids: code-switched input) and score them."""
    _check_parallel(sources, references, "source sentences")
    metric = bleu_metric(tgt_tokenizer.language)  # a missing tokeniser fails before decoding, not after
    start = time.perf_counter()
    hypotheses = translate_ids(model, tgt_tokenizer, sources, segments, beam=beam, length_penalty=length_penalty,
                               max_tokens=max_tokens, max_len_a=max_len_a, max_len_b=max_len_b)
    seconds = time.perf_counter() - start
    return TestResult(_corpus_score("BLEU", metric, hypotheses, references), chrf(hypotheses, references),
                      hypotheses, seconds)


def _corpus_score(name: str, metric: Metric, hypotheses: Sequence[str], references: Sequence[str]) -> Score:
    _check_parallel(hypotheses, references, "hypotheses")
    result = metric.corpus_score(list(hypotheses), [list(references)])
    # The signature is complete (it names the number of references) only after scoring.
    return Score(name, result.score, str(metric.get_signature()))


def _check_parallel(lines: Sequence[str], references: Sequence[str], what: str) -> None:
    """Every line needs its reference, and sacreBLEU cannot score an empty corpus."""
    if len(lines) != len(references):
        raise ValueError(f"{len(lines)} {what} but {len(references)} references: they must pair one to one")
    if not references:
        raise ValueError("no sentences to score")
