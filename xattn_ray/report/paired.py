"""Paired significance tests of two systems' translations of one test set, on BLEU and chrF: bootstrap
resampling and approximate randomization, computed from sacreBLEU's sentence statistics.

A corpus metric is not a mean over sentences, but it is a function of sums over sentences: sacreBLEU
extracts each sentence's sufficient statistics (BLEU: hypothesis and reference lengths, n-gram matches
and totals; chrF: character n-gram matches and counts) and computes the score from their sum. A test
scores many pseudo test sets, each a weighted sum of those rows, with sacreBLEU's own formula, so every
score here is sacreBLEU's. Both tests are two-sided: is the difference δ = score(system) −
score(baseline) larger than chance makes it?

- Paired bootstrap resampling (Koehn 2004): each sample draws the test set's sentences with
  replacement, the same sentences for both systems, and scores both: δ*. Under the null hypothesis
  the δ* would centre on 0, so the samples' |δ*| are shifted by their mean, and the p-value is the
  share of samples where that reaches the observed |δ|.
- Approximate randomization (Noreen 1989; Riezler and Maxwell 2005): under the null hypothesis the two
  systems' translations of a sentence are exchangeable. Each trial swaps each sentence's two
  translations with probability 1/2, and the p-value is the share of trials whose |score(A*) −
  score(B*)| reaches the observed |δ|.

Each p-value is (c + 1) / (n + 1) for c of n samples reaching |δ|, so it is never 0 and the test
rejects no more often than its level; "reaches" is ≥, so a system against itself (every pseudo
difference 0) has p = 1. The draws come from NumPy's PCG64 generator seeded with `seed`, and are the
same for every system tested against one baseline and for both metrics: the result depends on the
translations and the seed alone. With the defaults (seed 12345; 1000 resamples, 10,000 trials) they
are the draws of sacreBLEU's own `paired-bs` and `paired-ar` (`sacrebleu.significance`), whose
p-values these equal, except that sacreBLEU counts pseudo differences strictly above the observed one:
it gives a system against itself p = 1/(n + 1), "significant", and so two systems that differ in a
handful of sentences, whose randomization has a few outcomes, all ties or below.

`_extract_corpus_statistics` and `_compute_score_from_stats` are the sentence-statistics methods
sacreBLEU's paired tests are built on; they are underscored in sacreBLEU 2.6.0, which the project pins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xattn_ray.errors import XattnError

BOOTSTRAP, RANDOMIZATION = "bootstrap", "randomization"
PAIRED_TESTS = (BOOTSTRAP, RANDOMIZATION)
SAMPLES = {BOOTSTRAP: 1000, RANDOMIZATION: 10_000}  # sacreBLEU's defaults: resamples, trials
SEED = 12345  # sacreBLEU's default seed

_SIGNATURE_KEYS = {BOOTSTRAP: "bs", RANDOMIZATION: "ar"}  # how sacreBLEU's signatures name the two tests
_ROWS_AT_ONCE = 500  # randomization trials summed per matrix product: bounds the memory of long test sets


@dataclass(frozen=True)
class PairedResult:
    """One system against the baseline on one metric: both corpus scores, the p-value, and sacreBLEU's
    signature of the metric with the test's name, samples and seed (e.g. `nrefs:1|bs:1000|seed:12345|...`)."""

    metric: str  # "BLEU" or "chrF"
    score: float
    baseline: float
    p_value: float
    signature: str


def describe(test: str) -> str:
    """The test in words, with its number of samples: for the report's text."""
    if test == BOOTSTRAP:
        return f"paired bootstrap resampling ({SAMPLES[BOOTSTRAP]} resamples)"
    return f"paired approximate randomization ({SAMPLES[RANDOMIZATION]:,} trials)"


def check_test(test: str) -> None:
    """An unknown test name is an `XattnError` naming the known ones."""
    if test not in PAIRED_TESTS:
        raise XattnError(f"unknown paired test {test!r}: use {' or '.join(PAIRED_TESTS)}")


def paired_tests(baseline: Sequence[str], systems: Sequence[Sequence[str]], references: Sequence[str],
                 test: str = BOOTSTRAP, seed: int = SEED, samples: int | None = None,
                 tokenize: str | None = None) -> list[dict[str, PairedResult]]:
    """Each system's translations against the baseline's, on BLEU and chrF: one {metric: result} per system.

    `baseline`, each of `systems` and `references` hold one line per sentence of the test set (one
    reference each). `samples` defaults to `SAMPLES[test]`. `tokenize` is BLEU's tokeniser, as the runs
    were scored with it (`zh` for Chinese targets; see `signature_tokenizer`); None: sacreBLEU's default.
    """
    from sacrebleu.metrics import BLEU, CHRF

    check_test(test)
    samples = samples or SAMPLES[test]
    # One set of draws for every system and both metrics.
    rng = np.random.default_rng(seed)
    if test == BOOTSTRAP:
        weights = _bootstrap_weights(rng, len(references), samples)
    else:
        swapped = rng.integers(2, size=(samples, len(references)), dtype=bool)
    results: list[dict[str, PairedResult]] = [{} for _ in systems]
    bleu = BLEU(tokenize=tokenize) if tokenize else BLEU()
    for name, metric in (("BLEU", bleu), ("chrF", CHRF())):
        base = _statistics(metric, baseline, references)
        signature = metric.get_signature()  # known once the metric has seen the references
        signature.update("seed", str(seed))
        signature.update(_SIGNATURE_KEYS[test], samples)
        baseline_score = _score(metric, base.sum(0))
        if test == BOOTSTRAP:
            base_samples = _scores(metric, weights @ base)  # the same resamples for every system
        for result, hypotheses in zip(results, systems):
            stats = _statistics(metric, hypotheses, references)
            score = _score(metric, stats.sum(0))
            if test == BOOTSTRAP:
                differences = np.abs(_scores(metric, weights @ stats) - base_samples)
                pseudo = differences - differences.mean()
            else:
                pseudo = _randomized_differences(metric, base, stats, swapped)
            p_value = (np.count_nonzero(pseudo >= abs(score - baseline_score)) + 1) / (samples + 1)
            result[name] = PairedResult(name, score, baseline_score, float(p_value), str(signature))
    return results


def signature_tokenizer(signature: str | float | None) -> str | None:
    """The tokeniser a stored BLEU signature names (`...|tok:zh|...` -> `zh`), or None without one (a
    missing cell of a DataFrame is NaN)."""
    for part in (signature if isinstance(signature, str) else "").split("|"):
        key, _, value = part.partition(":")
        if key == "tok" and value:
            return value
    return None


def _statistics(metric, hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """sacreBLEU's sufficient statistics of each sentence: shape (sentences, statistics), as floats."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    return np.asarray(metric._extract_corpus_statistics(list(hypotheses), [list(references)]), dtype=np.float64)


def _score(metric, totals: np.ndarray) -> float:
    """The metric of a test set whose statistics sum to `totals` (shape (statistics,))."""
    return float(metric._compute_score_from_stats(totals).score)


def _scores(metric, totals: np.ndarray) -> np.ndarray:
    """`_score` of each row of `totals`, shape (samples, statistics) -> (samples,)."""
    return np.array([_score(metric, row) for row in totals])


def _bootstrap_weights(rng: np.random.Generator, sentences: int, samples: int) -> np.ndarray:
    """How often each resample draws each sentence: shape (samples, sentences), rows summing to `sentences`.

    The resamples are drawn as sentence indices (the draws sacreBLEU makes with the same seed), then
    counted, so a resample's statistics are one matrix product instead of a gathered copy per sample.
    """
    drawn = rng.choice(sentences, size=(samples, sentences), replace=True)
    offsets = drawn + sentences * np.arange(samples)[:, None]  # sample s's draws land in row s
    return np.bincount(offsets.ravel(), minlength=samples * sentences).reshape(samples, sentences).astype(np.float64)


def _randomized_differences(metric, base: np.ndarray, system: np.ndarray, swapped: np.ndarray) -> np.ndarray:
    """|score(A*) − score(B*)| of each trial, shape (trials,). `swapped` (trials, sentences) says where a
    trial swaps a sentence's translations: A* has the system's translation there and the baseline's
    elsewhere, B* the other one."""
    gain = system - base  # what a swap moves from B* to A*, per sentence
    totals_base, totals_system = base.sum(0), system.sum(0)
    differences = []
    for start in range(0, len(swapped), _ROWS_AT_ONCE):
        moved = swapped[start:start + _ROWS_AT_ONCE].astype(np.float64) @ gain
        differences.append(_scores(metric, totals_base + moved) - _scores(metric, totals_system - moved))
    return np.abs(np.concatenate(differences))
