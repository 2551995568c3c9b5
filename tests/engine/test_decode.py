"""Greedy and beam search over the cache: exactness, batching, length limits, `translate` end to end."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xattn_ray.engine.decode import beam_search, greedy_search, max_output_lengths, translate
from xattn_ray.engine.model import Transformer, preset_config
from xattn_ray.engine.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, TokenizerOptions, train_tokenizer

COPY_VOCAB = 20  # the 4 specials and 16 letters
TokenizerPair = tuple[Tokenizer, Tokenizer]  # source, target


def random_sources(seed: int, count: int, vocab_size: int,
                   lengths: tuple[int, int] = (1, 12)) -> torch.Tensor:
    """[count, S] source ids: random non-special tokens of random lengths, then EOS, right-padded."""
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(lengths[0], lengths[1] + 1, (count,), generator=generator).tolist()
    src = torch.full((count, max(sizes) + 1), PAD_ID)
    for row, size in enumerate(sizes):
        src[row, :size] = torch.randint(4, vocab_size, (size,), generator=generator)
        src[row, size] = EOS_ID
    return src


def random_model(seed: int, src_vocab: int = 30, tgt_vocab: int = 24, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(preset_config("tiny", src_vocab, tgt_vocab, **overrides)).eval()


def model_score(model: Transformer, src: torch.Tensor, output: list[int], length_penalty: float) -> float:
    """The search objective from a full teacher-forced forward: log P(output + EOS | src) / length ** lp."""
    source = src[src != PAD_ID][None]  # [1, S] without padding
    with torch.no_grad():
        log_probs = model(source, torch.tensor([[BOS_ID, *output]])).log_softmax(dim=-1)[0]
    gold = torch.tensor([*output, EOS_ID])
    return log_probs.gather(1, gold[:, None]).sum().item() / len(gold) ** length_penalty


def content(src: torch.Tensor) -> list[list[int]]:
    """The source ids of each row of src [B, S], without EOS and PAD."""
    return [[token for token in row if token not in (PAD_ID, EOS_ID)] for row in src.tolist()]


class Letters:
    """A stand-in tokenizer for the copy task: space-separated letters a-p are ids 4-19."""

    def encode(self, lines: Sequence[str]) -> list[list[int]]:
        return [[ord(letter) - ord("a") + 4 for letter in line.split()] for line in lines]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return [" ".join(chr(token - 4 + ord("a")) for token in sequence) for sequence in ids]


class TableModel(nn.Module):
    """A stand-in model for testing search alone: next-token log-probs are a fixed random function of
    the source and the prefix, sharp enough and varied enough that outputs differ in length and tokens."""

    def __init__(self, vocab_size: int, max_positions: int = 64):
        super().__init__()
        self.vocab_size = vocab_size
        self.config = SimpleNamespace(max_positions=max_positions)

    def log_probs(self, source: tuple[int, ...], prefix: tuple[int, ...]) -> torch.Tensor:
        """[V] log-probs of the token after `prefix` (which starts with BOS)."""
        # Python hashes tuples of ints the same in every process (only str and bytes hashes are salted).
        generator = torch.Generator().manual_seed(hash((source, prefix)) % 2 ** 62)
        return (3 * torch.randn(self.vocab_size, generator=generator)).log_softmax(dim=0)

    def start_decoding(self, src: torch.Tensor) -> PrefixState:
        return PrefixState([tuple(row) for row in src.tolist()], None)

    def decode_step(self, tokens: torch.Tensor, state: PrefixState) -> torch.Tensor:
        """Like Transformer.decode_step: R = B*K hypotheses, sentence-major, over B sources."""
        per_source = len(tokens) // len(state.sources)
        prefixes = state.prefixes or [() for _ in range(len(tokens))]
        state.prefixes = [prefix + (token,) for prefix, token in zip(prefixes, tokens.tolist())]
        sources = [source for source in state.sources for _ in range(per_source)]
        return torch.stack([self.log_probs(*row) for row in zip(sources, state.prefixes)])

    def score(self, src: torch.Tensor, output: list[int], length_penalty: float) -> float:
        """The search objective of `output` for src [S], from the table directly."""
        source, prefix = tuple(src.tolist()), (BOS_ID, *output)
        total = sum(self.log_probs(source, prefix[:i + 1])[token].item()
                    for i, token in enumerate([*output, EOS_ID]))
        return total / (len(output) + 1) ** length_penalty


@dataclass
class PrefixState:
    """TableModel's decoder state: the source and the tokens fed so far, per hypothesis."""

    sources: list[tuple[int, ...]]  # one per sentence still decoding
    prefixes: list[tuple[int, ...]] | None  # one per hypothesis; None before the first step

    def select(self, rows: torch.Tensor, sources: torch.Tensor | None = None) -> PrefixState:
        kept = self.sources if sources is None else [self.sources[i] for i in sources.tolist()]
        return PrefixState(kept, [self.prefixes[row] for row in rows.tolist()])


def all_outputs(tokens: Sequence[int], max_len: int) -> Iterator[list[int]]:
    """Every output of at most `max_len` tokens drawn from `tokens`."""
    for length in range(max_len + 1):
        yield from map(list, itertools.product(tokens, repeat=length))


@pytest.fixture(scope="module")
def copy_model() -> Transformer:
    """A tiny model trained to copy its source (lengths 3-8, 16 letters) until it does so exactly."""
    torch.manual_seed(0)
    model = Transformer(preset_config("tiny", COPY_VOCAB, COPY_VOCAB, dropout=0.0, attention_dropout=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices this small train faster without threads waiting on each other
    try:
        for step in range(400):
            src = random_sources(step, 32, COPY_VOCAB, lengths=(3, 8))  # [B, S]: ids, EOS, PAD
            bos, pad = torch.full((len(src), 1), BOS_ID), torch.full((len(src), 1), PAD_ID)
            tgt_in = torch.cat([bos, src.masked_fill(src == EOS_ID, PAD_ID)], dim=1)  # [B, S + 1]: BOS, ids
            tgt_out = torch.cat([src, pad], dim=1)  # [B, S + 1]: ids, EOS
            loss = F.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt_out.flatten(), ignore_index=PAD_ID)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> TokenizerPair:
    """Real SentencePiece models of two made-up languages, trained on a few hundred sentences each."""
    cache = tmp_path_factory.mktemp("tokenizers")
    return (train_tokenizer("xx", made_up_sentences(1), TokenizerOptions(vocab_size=150), cache),
            train_tokenizer("yy", made_up_sentences(2), TokenizerOptions(vocab_size=120), cache))


def made_up_sentences(seed: int, count: int = 400) -> list[str]:
    rng = random.Random(seed)
    syllables = ["ka", "to", "mi", "ra", "su", "ne", "lo", "pi", "da", "ve"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(80)]
    return [" ".join(rng.choices(words, k=rng.randint(2, 12))).capitalize() + "." for _ in range(count)]


# -- search --------------------------------------------------------------------------------------

def test_beam_of_one_is_greedy_search() -> None:
    for seed in range(3):
        model, src = random_model(seed), random_sources(seed, 16, 30)
        assert beam_search(model, src, beam=1) == greedy_search(model, src)


@pytest.mark.parametrize("length_penalty", [0.5, 1.2, 2.5])
def test_an_unpruned_beam_finds_the_best_output_and_never_loses_to_greedy(length_penalty: float) -> None:
    # Beam 5 can score below greedy on its own objective: the greedy prefix can fall out of the beam,
    # and fairseq's rule stops a sentence at 5 finished hypotheses, which may all be shorter and worse
    # than a greedy one still growing. What beam search guarantees is exactness once nothing is pruned.
    # Here 2 tokens (UNK, 4) can continue a hypothesis: with at most 6 tokens there are 127 outputs and
    # at most 64 live hypotheses, which a beam of 128 keeps. The beam is wider than the candidates of
    # the first steps, so it also checks that beams not yet started (at -inf) never count as finished.
    model, src = TableModel(vocab_size=5), random_sources(0, 16, 30)
    outputs = list(all_outputs([3, 4], max_len=6))
    found = beam_search(model, src, beam=128, length_penalty=length_penalty, max_len_a=0.0, max_len_b=6)
    greedy = greedy_search(model, src, max_len_a=0.0, max_len_b=6)
    for row in range(len(src)):
        scores = {tuple(output): model.score(src[row], output, length_penalty) for output in outputs}
        assert tuple(found[row]) == max(scores, key=scores.__getitem__)
        assert scores[tuple(greedy[row])] <= scores[tuple(found[row])]
    assert len({len(output) for output in found}) > 2  # the length penalty had choices to make


def test_copy_model_decodes_its_inputs_exactly(copy_model: Transformer) -> None:
    src = random_sources(10_000, 64, COPY_VOCAB, lengths=(3, 8))  # unseen sentences, mixed lengths
    assert greedy_search(copy_model, src) == content(src)
    assert beam_search(copy_model, src, beam=5) == content(src)


def test_search_restores_training_mode_and_decodes_without_dropout() -> None:
    model, src = random_model(3), random_sources(3, 8, 30)
    beam_outputs, greedy_outputs = beam_search(model, src), greedy_search(model, src)
    model.train()  # dropout on: a search that ran in this mode would not repeat itself
    assert beam_search(model, src) == beam_outputs and greedy_search(model, src) == greedy_outputs
    assert model.training


# -- limits ---------------------------------------------------------------------------------------

def test_max_output_lengths_follow_the_source_length_and_the_positions() -> None:
    model = random_model(0, max_positions=40)
    src = torch.tensor([[EOS_ID] + [PAD_ID] * 39, [5] * 5 + [EOS_ID] + [PAD_ID] * 34, [5] * 39 + [EOS_ID]])
    assert max_output_lengths(model, src, 1.2, 10).tolist() == [10, 16, 39]  # 1.2 * 39 + 10 capped at 40 - 1
    assert max_output_lengths(model, src, 0.5, 1).tolist() == [1, 3, 20]


@pytest.mark.parametrize("search", [greedy_search, beam_search])
def test_outputs_respect_the_maximum_length(search) -> None:
    model, src = random_model(5, max_positions=16), random_sources(5, 12, 30, lengths=(0, 15))
    for max_len_a, max_len_b in [(0.5, 1), (0.0, 0), (1.2, 10)]:
        outputs = search(model, src, max_len_a=max_len_a, max_len_b=max_len_b)
        limits = max_output_lengths(model, src, max_len_a, max_len_b).tolist()
        assert all(len(output) <= limit for output, limit in zip(outputs, limits))
    # a random model rarely ends early, so the last limits (capped by the 16 positions) were reached
    assert any(len(output) == limit for output, limit in zip(outputs, limits))


@pytest.mark.parametrize("search", [greedy_search, beam_search])
def test_pad_and_bos_are_never_emitted(search, monkeypatch: pytest.MonkeyPatch) -> None:
    model, src = random_model(6), random_sources(6, 8, 30)
    decode_step = model.decode_step

    def certain_specials(tokens: torch.Tensor, state) -> torch.Tensor:
        log_probs = decode_step(tokens, state)
        log_probs[:, [PAD_ID, BOS_ID]] = 0.0  # probability 1: the model would always pick them
        return log_probs

    monkeypatch.setattr(model, "decode_step", certain_specials)
    outputs = search(model, src)
    assert not {PAD_ID, BOS_ID} & set(itertools.chain(*outputs))


# -- translate ----------------------------------------------------------------------------------

def test_translate_restores_the_input_order(copy_model: Transformer) -> None:
    rng = random.Random(0)
    lines = [" ".join(rng.choices("abcdefghijklmnop", k=rng.randint(3, 8))) for _ in range(40)]
    for beam in (1, 5):
        # 20 padded tokens: batches of 2 to 6 sentences, decoded shortest first
        assert translate(copy_model, Letters(), Letters(), lines, beam=beam, max_tokens=20) == lines


def test_translate_is_the_same_in_one_batch_or_one_by_one(tokenizers: TokenizerPair) -> None:
    src_tokenizer, tgt_tokenizer = tokenizers
    model = random_model(7, src_tokenizer.vocab_size, tgt_tokenizer.vocab_size)
    lines = made_up_sentences(3, count=12) + ["", "Ka.", "   "]
    for beam in (1, 5):
        together = translate(model, src_tokenizer, tgt_tokenizer, lines, beam=beam)
        alone = [translate(model, src_tokenizer, tgt_tokenizer, [line], beam=beam)[0] for line in lines]
        assert together == alone
        assert len(together) == len(lines) and all(isinstance(text, str) for text in together)


def test_translate_truncates_sources_longer_than_the_positions(tokenizers: TokenizerPair) -> None:
    src_tokenizer, tgt_tokenizer = tokenizers
    model = random_model(8, src_tokenizer.vocab_size, tgt_tokenizer.vocab_size, max_positions=16)
    long_line = " ".join(made_up_sentences(4, count=10))
    assert len(src_tokenizer.encode([long_line])[0]) > 16
    assert len(translate(model, src_tokenizer, tgt_tokenizer, [long_line, "Ka."], beam=2)) == 2


def test_translate_of_no_lines_is_empty(tokenizers: TokenizerPair) -> None:
    src_tokenizer, tgt_tokenizer = tokenizers
    model = random_model(9, src_tokenizer.vocab_size, tgt_tokenizer.vocab_size)
    assert translate(model, src_tokenizer, tgt_tokenizer, []) == []
