"""Code-switched examples: alignment of source segments to target segments, held-out pairs, encoding."""

import re

import pytest

from xattn_ray.engine.batching import EncodedPairs, collate, make_batches
from xattn_ray.data.codeswitch import (CodeSwitchedPair, CodeSwitchError, CodeSwitchOptions, build_test_sets,
                                       build_training_set, encode_codeswitched)
from xattn_ray.errors import XattnError
from xattn_ray.engine.tokenizer import BOS_ID, EOS_ID, PAD_ID

LINES = 40
# Every sentence names its language and line, so an example shows where each of its parts came from.
CORPUS = {lang: [f"{lang}{i} w{i}" for i in range(LINES)] for lang in ("fr", "de", "cs", "en")}
OPTIONS = CodeSwitchOptions(train_pairs=[("fr", "de")], test_pairs=[("de", "cs"), ("cs", "fr")],
                            code_switched_share=0.75, seed=3)


def origin(sentence: str) -> tuple[str, int]:
    """(language, line) of one of CORPUS's sentences."""
    lang, line = re.fullmatch(r"([a-z]+)(\d+) w\d+", sentence).groups()
    return lang, int(line)


def assert_aligned(example: CodeSwitchedPair) -> tuple[int, int]:
    """Each source segment is in its stated language, and the target is the pivot translation of the
    first segment followed by that of the second; returns the two lines."""
    (lang1, i), (lang2, j) = map(origin, example.src_segments)
    assert (lang1, lang2) == example.src_langs
    assert i != j
    assert example.tgt == f"{CORPUS['en'][i]} {CORPUS['en'][j]}"
    return i, j


def test_each_target_is_the_pivot_translation_of_its_two_segments_in_order():
    examples = build_training_set(CORPUS, "en", OPTIONS)
    firsts = sorted(assert_aligned(example)[0] for example in examples)
    assert firsts == list(range(LINES))  # every line is a first segment exactly once
    switched = [example for example in examples if example.code_switched]
    assert len(switched) == 30 and {example.src_langs for example in switched} == {("fr", "de")}
    monolingual = [example.src_langs for example in examples if not example.code_switched]
    assert sorted(monolingual) == [("de", "de")] * 5 + [("fr", "fr")] * 5  # the training pairs' languages


def test_test_sets_are_aligned_and_pair_the_same_sentences_in_every_language_pair():
    sets = build_test_sets(CORPUS, "en", OPTIONS)
    assert list(sets["seen"]) == [("fr", "de")] and list(sets["unseen"]) == [("de", "cs"), ("cs", "fr")]
    lines = {pair: [assert_aligned(example) for example in examples]
             for group in sets.values() for pair, examples in group.items()}
    assert all(len(pairs) == LINES and [i for i, _ in pairs] == list(range(LINES)) for pairs in lines.values())
    assert len({tuple(pairs) for pairs in lines.values()}) == 1


@pytest.mark.parametrize("order", ["as_given", "both", "random"])
def test_held_out_pairs_never_appear_in_training(order):
    options = CodeSwitchOptions(train_pairs=[("fr", "de"), ("de", "cs")], test_pairs=[("cs", "fr")],
                                code_switched_share=1.0, order=order, seed=1)
    examples = build_training_set(CORPUS, "en", options)
    pairs = {example.src_langs for example in examples}
    assert not {pair for pair in pairs if set(pair) == {"cs", "fr"}}
    expected = {("fr", "de"), ("de", "cs")} if order == "as_given" else \
        {("fr", "de"), ("de", "fr"), ("de", "cs"), ("cs", "de")}
    assert pairs == expected
    if order == "both":  # each order gets exactly its share
        assert sum(example.src_langs == ("de", "fr") for example in examples) == LINES // 4


def test_the_seed_decides_everything():
    assert build_training_set(CORPUS, "en", OPTIONS) == build_training_set(CORPUS, "en", OPTIONS)
    other = CodeSwitchOptions(**{**OPTIONS.__dict__, "seed": 4})
    assert build_training_set(CORPUS, "en", OPTIONS) != build_training_set(CORPUS, "en", other)


def test_mistakes_are_one_line_errors():
    cases = [
        (lambda: CodeSwitchOptions(train_pairs=[("fr", "de")], test_pairs=[("fr", "de")]),
         r"held-out pair \(fr, de\) is also a training pair$"),
        (lambda: CodeSwitchOptions(train_pairs=[("fr", "de")], test_pairs=[("de", "fr")], order="both"),
         r"held-out pair \(de, fr\) is also a training pair \(order 'both' trains both orders\)"),
        (lambda: CodeSwitchOptions(train_pairs=[("fr", "fr")]), "needs two different languages"),
        (lambda: CodeSwitchOptions(train_pairs=[("fr", "de")], code_switched_share=1.5), r"must be in \[0, 1\]"),
        (lambda: build_training_set(CORPUS, "en", CodeSwitchOptions(train_pairs=[("fr", "ja")])),
         "language 'ja' is not in the corpus"),
        (lambda: build_test_sets({**CORPUS, "de": CORPUS["de"][:-1]}, "en", OPTIONS), "equal line counts"),
    ]
    for make, message in cases:
        with pytest.raises(CodeSwitchError, match=message) as info:
            make()
        assert isinstance(info.value, XattnError) and "\n" not in str(info.value)


class Words:
    """A stand-in tokenizer: each distinct word gets the next id from 4 (ids 0-3 are special)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def encode(self, lines):
        return [[self.ids.setdefault(word, 4 + len(self.ids)) for word in line.split()] for line in lines]


def test_encoding_puts_bos_first_eos_last_and_one_segment_id_per_token():
    pairs = [CodeSwitchedPair(("x y", "z"), ("fr", "de"), "A B"),
             CodeSwitchedPair(("x", "y z"), ("fr", "fr"), "C"),
             CodeSwitchedPair(("x " * 20, "y"), ("fr", "de"), "D")]  # too long for 16 positions
    src_tok, tgt_tok = Words(), Words()
    encoded = encode_codeswitched(pairs, {"fr": src_tok, "de": src_tok}, tgt_tok, max_positions=16)
    x, y, z = src_tok.encode(["x y z"])[0]
    assert encoded.src == [[BOS_ID, x, y, z, EOS_ID], [BOS_ID, x, y, z, EOS_ID]]
    assert encoded.segments == [[0, 1, 1, 2, 2], [0, 1, 1, 1, 1]]  # a monolingual example has no segment 2
    assert encoded.tgt == [tgt_tok.encode(["A B"])[0] + [EOS_ID], tgt_tok.encode(["C"])[0] + [EOS_ID]]
    assert encoded.dropped_too_long == 1
    with pytest.raises(CodeSwitchError, match="no source tokenizer for language 'de'"):
        encode_codeswitched(pairs, {"fr": src_tok}, tgt_tok, max_positions=16)


def test_batches_carry_segment_ids_padded_beside_the_source():
    examples = build_training_set(CORPUS, "en", OPTIONS)
    encoded = encode_codeswitched(examples, Words(), Words(), max_positions=64)
    for indices in make_batches(encoded, max_tokens=60, seed=0, epoch=0):
        batch = collate(encoded, indices)
        assert batch.src_segments.shape == batch.src.shape
        assert ((batch.src_segments == -1) == (batch.src == PAD_ID)).all()
    plain = collate(EncodedPairs(encoded.src, encoded.tgt), [0, 1])  # sources without segments
    assert plain.src_segments is None
