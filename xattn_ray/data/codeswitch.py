"""Code-switched translation examples built from a multi-parallel corpus (Foroutan et al. 2023, for MT).

In a multi-parallel corpus line i of every language says the same thing, so two-sentence examples can
be put together whose halves are in different languages: the source is sentence i in language L1
followed by sentence j in language L2, and the target is the pivot translation of i followed by that
of j. Which source segment a target word comes from is thus known, and the pair (L1, L2) can be
chosen: train on some pairs and test on *unseen* combinations (train on fr+de, test on de+cs). The
paper also mixes in monolingual examples, here two sentences of one language (L1 + L1).

Training examples use every line once as the first segment, its partner j a random other line; a
given share of them are code-switched, spread evenly over the training pairs, the rest monolingual,
spread evenly over the training pairs' languages. `order` says how a pair's languages are ordered:
`as_given` (L1 then L2), `both` (the reversed pairs join the list, so each order gets half), or
`random` (a coin flip per example). Everything is drawn from `seed` alone.

Encoding (`encode_codeswitched`) makes the source

    ids   BOS   segment one's pieces   segment two's pieces   EOS
    seg    0    1 ...                  2 ...                  2

BOS is the language-neutral first token ([CLS] in the paper's models), which the structured masks
always connect to both segments. One EOS ends the source, as every source of the project ends, so a
standard model reads a code-switched source like any other; it belongs to segment two, and the
boundary between the segments is told by the ids alone. A monolingual example (L1 + L1) is one
language, so both of its sentences get id 1: having no segment 2, it gets plain attention, as the
authors' monolingual examples do (their `mono_alpha` 1.0).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from xattn_ray.engine.batching import EncodedPairs
from xattn_ray.engine.structured_dropout import FIRST, SEGMENT_ONE, SEGMENT_TWO
from xattn_ray.engine.tokenizer import BOS_ID, EOS_ID, Tokenizer
from xattn_ray.errors import XattnError
from xattn_ray.schema import Invalid

LanguagePairs = list[tuple[str, str]]  # ordered (L1, L2): L1's sentence first


class CodeSwitchError(Invalid, XattnError):
    """Code-switching options that cannot be used: overlapping or malformed pairs, a language the corpus
    lacks. An `Invalid`, so a mistake in an experiment file is reported with its file and line."""


@dataclass(frozen=True)
class CodeSwitchedPair:
    """One example: two source sentences (in `src_langs`) and the pivot translation of both, in order."""

    src_segments: tuple[str, str]
    src_langs: tuple[str, str]
    tgt: str

    @property
    def code_switched(self) -> bool:
        return self.src_langs[0] != self.src_langs[1]


@dataclass(frozen=True)
class CodeSwitchOptions:
    """Which language pairs train, which are held out for testing, and how training examples are mixed."""

    train_pairs: LanguagePairs  # (L1, L2) pairs of the code-switched training examples
    test_pairs: LanguagePairs = field(default_factory=list)  # held out: unseen combinations, tested only
    code_switched_share: float = 0.5  # of training examples; the rest are monolingual (L1 + L1)
    order: Literal["as_given", "both", "random"] = "as_given"  # the languages' order in a training example
    seed: int = 1

    def __post_init__(self) -> None:
        if not self.train_pairs:
            raise CodeSwitchError("train_pairs", "needs at least one language pair")
        for key in ("train_pairs", "test_pairs"):
            for first, second in getattr(self, key):
                if first == second:
                    raise CodeSwitchError(key, f"pair ({first}, {second}) is monolingual; a code-switched "
                                               f"pair needs two different languages")
        if not 0.0 <= self.code_switched_share <= 1.0:
            raise CodeSwitchError("code_switched_share", f"must be in [0, 1], got {self.code_switched_share}")
        if self.order not in ("as_given", "both", "random"):
            raise CodeSwitchError("order", f"must be 'as_given', 'both' or 'random', got {self.order!r}")
        trained = self.trained_pairs()
        for first, second in self.test_pairs:
            if (first, second) in trained:
                both = "" if self.order == "as_given" else f" (order {self.order!r} trains both orders)"
                raise CodeSwitchError("test_pairs", f"held-out pair ({first}, {second}) is also a "
                                                    f"training pair{both}")

    def trained_pairs(self) -> set[tuple[str, str]]:
        """Every ordered pair that training examples can have: with `both` or `random`, reversals too."""
        pairs = {(first, second) for first, second in self.train_pairs}
        return pairs if self.order == "as_given" else pairs | {(second, first) for first, second in pairs}

    def monolingual_languages(self) -> list[str]:
        """The languages of the training pairs, in order of first appearance (monolingual examples)."""
        return list(dict.fromkeys(lang for pair in self.train_pairs for lang in pair))


def build_training_set(corpus: Mapping[str, Sequence[str]], pivot: str,
                      options: CodeSwitchOptions) -> list[CodeSwitchedPair]:
    """One example per line of `corpus` (language -> aligned lines, `pivot` the target language).

    The first round(share * lines) examples, in a seeded order of the lines, are code-switched, cycling
    through the training pairs; the others monolingual, cycling through their languages.
    """
    lines = _check_corpus(corpus, pivot, [*options.train_pairs, *options.test_pairs])
    rng = random.Random(f"codeswitch/train/{options.seed}")  # a string seed hashes stably across processes
    pairs = [tuple(pair) for pair in options.train_pairs]
    if options.order == "both":
        pairs += [(second, first) for first, second in pairs]
    languages = options.monolingual_languages()
    firsts = list(range(lines))
    rng.shuffle(firsts)
    switched = round(options.code_switched_share * lines)
    examples = []
    for rank, first in enumerate(firsts):
        if rank < switched:
            langs = pairs[rank % len(pairs)]
            if options.order == "random" and rng.random() < 0.5:
                langs = langs[::-1]
        else:
            langs = (languages[(rank - switched) % len(languages)],) * 2
        examples.append(_example(corpus, pivot, langs, first, _partner(rng, first, lines)))
    return examples


def build_test_sets(corpus: Mapping[str, Sequence[str]], pivot: str,
                  options: CodeSwitchOptions) -> dict[str, dict[tuple[str, str], list[CodeSwitchedPair]]]:
    """Code-switched test sets from a test split: {"seen": {pair: examples}, "unseen": {pair: examples}}.

    Each set has one example per line (in line order) with its languages as given; `seen` has one
    set per training pair, `unseen` one per held-out pair. Partners are drawn from the seed, the
    same for every pair, so all sets pair the same sentences and differ in languages only.
    """
    lines = _check_corpus(corpus, pivot, [*options.train_pairs, *options.test_pairs])

    def test_set(langs: tuple[str, str]) -> list[CodeSwitchedPair]:
        rng = random.Random(f"codeswitch/test/{options.seed}")
        return [_example(corpus, pivot, langs, first, _partner(rng, first, lines)) for first in range(lines)]

    return {"seen": {tuple(pair): test_set(tuple(pair)) for pair in options.train_pairs},
            "unseen": {tuple(pair): test_set(tuple(pair)) for pair in options.test_pairs}}


def _check_corpus(corpus: Mapping[str, Sequence[str]], pivot: str, pairs: LanguagePairs) -> int:
    """The corpus's line count, after checking it has every language named and aligned lines."""
    for lang in [pivot, *(lang for pair in pairs for lang in pair)]:
        if lang not in corpus:
            raise CodeSwitchError(None, f"language {lang!r} is not in the corpus (it has: "
                                        f"{', '.join(sorted(corpus))})")
    counts = {lang: len(lines) for lang, lines in corpus.items()}
    if len(set(counts.values())) != 1:
        raise CodeSwitchError(None, f"a multi-parallel corpus needs equal line counts, got {counts}")
    lines = counts[pivot]
    if lines < 2:
        raise CodeSwitchError(None, f"two-sentence examples need at least 2 lines, the corpus has {lines}")
    return lines


def _partner(rng: random.Random, first: int, lines: int) -> int:
    """A random line other than `first`."""
    second = rng.randrange(lines - 1)
    return second + (second >= first)


def _example(corpus: Mapping[str, Sequence[str]], pivot: str, langs: tuple[str, str], first: int,
             second: int) -> CodeSwitchedPair:
    return CodeSwitchedPair(src_segments=(corpus[langs[0]][first], corpus[langs[1]][second]),
                            src_langs=langs, tgt=f"{corpus[pivot][first]} {corpus[pivot][second]}")


def encode_codeswitched(pairs: Sequence[CodeSwitchedPair], src_tokenizers: Tokenizer | Mapping[str, Tokenizer],
                        tgt_tokenizer: Tokenizer, max_positions: int) -> EncodedPairs:
    """Source ids, segment ids (module docstring) and target ids + EOS of each example, for batching.

    `src_tokenizers` is one tokenizer for every source language, or one per language. The ids of
    both segments index the model's one source embedding table, so per-language tokenizers must
    share an id space (a joint source vocabulary); with the project's separate vocabularies per
    language, train one tokenizer on all source languages. Examples that do not fit
    `max_positions` (BOS and EOS included) are dropped and counted.
    """
    def tokenizer(lang: str) -> Tokenizer:
        if not isinstance(src_tokenizers, Mapping):
            return src_tokenizers
        if lang not in src_tokenizers:
            raise CodeSwitchError(None, f"no source tokenizer for language {lang!r} (have: "
                                        f"{', '.join(sorted(src_tokenizers))})")
        return src_tokenizers[lang]

    # Encode per language in batches: SentencePiece is much faster on many lines at once.
    segment_ids: dict[tuple[int, int], list[int]] = {}  # (example, segment) -> piece ids
    for lang in dict.fromkeys(lang for pair in pairs for lang in pair.src_langs):
        keys = [(index, half) for index, pair in enumerate(pairs) for half in (0, 1)
                if pair.src_langs[half] == lang]
        texts = [pairs[index].src_segments[half] for index, half in keys]
        segment_ids.update(zip(keys, tokenizer(lang).encode(texts)))
    src_ids, segments, tgt_ids, dropped = [], [], [], 0
    for index, (pair, tgt) in enumerate(zip(pairs, tgt_tokenizer.encode([pair.tgt for pair in pairs]))):
        first, second = segment_ids[index, 0], segment_ids[index, 1]
        src = [BOS_ID, *first, *second, EOS_ID]
        if len(src) > max_positions or len(tgt) + 1 > max_positions:
            dropped += 1
            continue
        second_id = SEGMENT_TWO if pair.code_switched else SEGMENT_ONE
        src_ids.append(src)
        segments.append([FIRST] + [SEGMENT_ONE] * len(first) + [second_id] * (len(second) + 1))
        tgt_ids.append(tgt + [EOS_ID])
    return EncodedPairs(src_ids, tgt_ids, dropped, segments=segments)


def encode_monolingual(sources: Sequence[str], targets: Sequence[str], src_tokenizer: Tokenizer,
                       tgt_tokenizer: Tokenizer, max_positions: int) -> EncodedPairs:
    """Single sentences encoded as one-segment examples, `BOS pieces EOS` with segment ids `0 1 ... 1`.

    A code-switching study's base model trains on these, so the language-neutral BOS that starts every
    code-switched source is a trained embedding by the time fine-tuning starts, and its monolingual test
    sets are read the same way. Pairs that do not fit `max_positions` are dropped and counted.
    """
    src_ids, segments, tgt_ids, dropped = [], [], [], 0
    for src, tgt in zip(src_tokenizer.encode(sources), tgt_tokenizer.encode(targets)):
        if len(src) + 2 > max_positions or len(tgt) + 1 > max_positions:
            dropped += 1
            continue
        src_ids.append([BOS_ID, *src, EOS_ID])
        segments.append([FIRST] + [SEGMENT_ONE] * (len(src) + 1))
        tgt_ids.append(tgt + [EOS_ID])
    return EncodedPairs(src_ids, tgt_ids, dropped, segments=segments)
