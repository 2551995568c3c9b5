"""The paired tests of two systems' translations (bootstrap resampling, approximate randomization) on BLEU
and chrF, on made-up sentences: systems that clearly differ, identical systems, systems as good as each
other, and sacreBLEU's own paired tests (`sacrebleu.significance.PairedTest`) as the cross-check.
"""

from __future__ import annotations

import random

import pytest
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from xattn_ray.report.paired import BOOTSTRAP, RANDOMIZATION, SAMPLES, paired_tests, signature_tokenizer

METRICS = ("BLEU", "chrF")
TESTS = (BOOTSTRAP, RANDOMIZATION)


def sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = [f"{stem}{ending}" for stem in ("dor", "fel", "gam", "lin", "pas", "rok", "tuv") for ending in "aeiou"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(6, 12))) for _ in range(count)]


REFERENCES = sentences(80, seed=1)
WRONG = sentences(80, seed=2)


def right_where(keep) -> list[str]:
    """Translations that are the reference where `keep(i)` and a wrong sentence elsewhere."""
    return [reference if keep(i) else wrong for i, (reference, wrong) in enumerate(zip(REFERENCES, WRONG))]


GOOD = right_where(lambda i: i % 5 != 0)  # 4 in 5 right
POOR = right_where(lambda i: i % 5 == 0)  # 1 in 5 right
EVEN = right_where(lambda i: i % 2 == 0)  # half right...
ODD = right_where(lambda i: i % 2 == 1)  # ...and the other half: as good, not the same
THIRDS = right_where(lambda i: i % 3 != 0)  # 2 in 3 right: better than EVEN, not by far
CLOSE = right_where(lambda i: i % 2 == 0 or i in (1, 3, 5))  # EVEN and three sentences more


@pytest.mark.parametrize("test", TESTS)
def test_systems_that_clearly_differ_have_a_small_p_on_both_metrics(test):
    [better], [worse] = paired_tests(POOR, [GOOD], REFERENCES, test), paired_tests(GOOD, [POOR], REFERENCES, test)
    for metric in METRICS:
        assert better[metric].score > better[metric].baseline
        assert better[metric].p_value == worse[metric].p_value == 1 / (SAMPLES[test] + 1)  # no sample reaches it
        assert better[metric].score == worse[metric].baseline  # the two directions, the same scores


@pytest.mark.parametrize("test", TESTS)
def test_a_system_against_itself_is_never_significant(test):
    [same] = paired_tests(EVEN, [list(EVEN)], REFERENCES, test)
    for metric in METRICS:
        assert same[metric].score == same[metric].baseline
        assert same[metric].p_value == 1.0  # every pseudo difference is 0, and 0 reaches 0


@pytest.mark.parametrize("test", TESTS)
def test_systems_as_good_as_each_other_are_not_significant(test):
    [even] = paired_tests(ODD, [EVEN], REFERENCES, test)
    for metric in METRICS:
        assert abs(even[metric].score - even[metric].baseline) < 2
        assert even[metric].p_value > 0.3


def test_scores_are_sacrebleus_corpus_scores_and_signatures_name_the_test():
    [by_bootstrap] = paired_tests(POOR, [GOOD], REFERENCES, BOOTSTRAP)
    [by_randomization] = paired_tests(POOR, [GOOD], REFERENCES, RANDOMIZATION)
    for metric, scorer in (("BLEU", BLEU()), ("chrF", CHRF())):
        assert by_bootstrap[metric].score == pytest.approx(scorer.corpus_score(GOOD, [REFERENCES]).score, abs=1e-9)
        assert by_bootstrap[metric].baseline == pytest.approx(scorer.corpus_score(POOR, [REFERENCES]).score, abs=1e-9)
    assert by_bootstrap["BLEU"].signature.startswith("nrefs:1|bs:1000|seed:12345|case:mixed|eff:no|tok:13a|")
    assert by_randomization["chrF"].signature.startswith("nrefs:1|ar:10000|seed:12345|case:mixed|eff:yes|nc:6|")


@pytest.mark.parametrize("test", TESTS)
def test_a_test_depends_on_the_translations_and_its_seed_alone(test):
    first = paired_tests(EVEN, [ODD, GOOD], REFERENCES, test, seed=7)
    assert paired_tests(EVEN, [ODD, GOOD], REFERENCES, test, seed=7) == first
    other = paired_tests(EVEN, [ODD, GOOD], REFERENCES, test, seed=8)
    for metric in METRICS:
        assert 0.3 < first[0][metric].p_value < 1  # p in between, where the draws show
        assert other[0][metric].p_value != first[0][metric].p_value  # other draws, another estimate of the same p
        assert other[0][metric].p_value == pytest.approx(first[0][metric].p_value, abs=0.05)
        assert other[1][metric].p_value < 0.01 and first[1][metric].p_value < 0.01  # GOOD is better by either


@pytest.mark.parametrize("test, kind", [(BOOTSTRAP, "bs"), (RANDOMIZATION, "ar")])
def test_p_values_are_sacrebleus_own_paired_tests(test, kind):
    """With sacreBLEU's seed and sample counts, the draws are sacreBLEU's and so are the p-values; except
    for a system against itself, which sacreBLEU calls significant (it counts pseudo differences strictly
    above the observed 0: none, p = 1/(n + 1)) and these tests do not (p = 1)."""
    systems = [THIRDS, ODD, GOOD, list(EVEN)]
    ours = paired_tests(EVEN, systems, REFERENCES, test)
    _, theirs = PairedTest([("even", EVEN), *((f"system{i}", lines) for i, lines in enumerate(systems))],
                           {"BLEU": BLEU(), "chrF": CHRF()}, [REFERENCES], test_type=kind)()
    for metric, name in (("BLEU", "BLEU"), ("chrF", "chrF2")):  # sacreBLEU names the chrF score chrF2
        assert [result[metric].score for result in ours] == pytest.approx([r.score for r in theirs[name][1:]])
        p_ours, p_theirs = [result[metric].p_value for result in ours], [r.p_value for r in theirs[name][1:]]
        assert p_ours[:3] == pytest.approx(p_theirs[:3], abs=1e-12)
        assert 0.01 < p_ours[0] < 0.1 and p_ours[2] < 0.01  # a close system and a far one: not only the extremes
        assert (p_ours[3], p_theirs[3]) == (1.0, pytest.approx(1 / (SAMPLES[test] + 1)))


def test_a_difference_in_three_sentences_is_not_significant_by_randomization():
    """CLOSE differs from EVEN in 3 of 80 sentences. Randomization swaps only those: of the 8 ways, the
    two that swap all or none give the observed difference again, so p is 2/8 (up to the sampling of
    trials). sacreBLEU counts only differences strictly above the observed one, none, and says 1/(n + 1)."""
    [ours] = paired_tests(EVEN, [CLOSE], REFERENCES, RANDOMIZATION)
    _, theirs = PairedTest([("even", EVEN), ("close", CLOSE)], {"BLEU": BLEU()}, [REFERENCES], test_type="ar")()
    assert ours["BLEU"].score > ours["BLEU"].baseline
    assert ours["BLEU"].p_value == pytest.approx(0.25, abs=0.015) and ours["chrF"].p_value == ours["BLEU"].p_value
    assert theirs["BLEU"][1].p_value == pytest.approx(1 / (SAMPLES[RANDOMIZATION] + 1))


def test_bleu_uses_the_tokenizer_the_runs_were_scored_with():
    """A Chinese target: BLEU tokenised by characters (`tok:zh`, as sacreBLEU scores `trg_lang=zh`), which
    the stored signature names; 13a would see each unspaced sentence as one word."""
    references = ["我们今天去公园散步", "他喜欢读书和写字", "天气很好阳光明媚", "这是一个简单的例子"] * 5
    hypotheses = ["我们今天去公园", "他喜欢读书", "天气很好", "这是一个例子"] * 5
    tokenize = signature_tokenizer("nrefs:1|case:mixed|eff:no|tok:zh|smooth:exp|version:2.6.0")
    [by_zh] = paired_tests(references, [hypotheses], references, BOOTSTRAP, tokenize=tokenize)
    [by_13a] = paired_tests(references, [hypotheses], references, BOOTSTRAP)
    assert tokenize == "zh" and "tok:zh" in by_zh["BLEU"].signature
    assert by_zh["BLEU"].score == pytest.approx(BLEU(trg_lang="zh").corpus_score(hypotheses, [references]).score)
    assert by_zh["BLEU"].score > 10 > by_13a["BLEU"].score
    assert signature_tokenizer(None) is None and signature_tokenizer(float("nan")) is None and signature_tokenizer("nrefs:1|tok:13a") == "13a"
