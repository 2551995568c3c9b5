"""Token-based batches of similar-length sentence pairs, reproducible from (seed, epoch).

Sentences are encoded once; each epoch sorts them by length (ties broken at random), cuts the order
into batches whose padded size stays under `max_tokens`, and shuffles the batches. Sorting keeps
padding small, so nearly every computed position is a real token; deriving the order from
(seed, epoch) alone means a resumed run sees exactly the batches it would have seen.

Code-switched sources (`data/codeswitch.py`) carry a segment id per token, padded with -1 beside them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from xattn_ray.engine.structured_dropout import PADDING
from xattn_ray.engine.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer


@dataclass(frozen=True)
class EncodedPairs:
    """Token ids of aligned sentences: `src[i]` and `tgt[i]` each end with EOS."""

    src: list[list[int]]
    tgt: list[list[int]]
    dropped_too_long: int = 0  # pairs longer than the model's position table
    segments: list[list[int]] | None = None  # code-switched sources: a segment id per source token

    def __len__(self) -> int:
        return len(self.src)


def encode_pairs(sources: Sequence[str], targets: Sequence[str], src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer,
                 max_positions: int) -> EncodedPairs:
    """Encode aligned sentences and append EOS; drop pairs that do not fit `max_positions` (BOS/EOS included)."""
    src_ids, tgt_ids, dropped = [], [], 0
    for src, tgt in zip(src_tokenizer.encode(sources), tgt_tokenizer.encode(targets)):
        if len(src) + 1 > max_positions or len(tgt) + 1 > max_positions:
            dropped += 1
            continue
        src_ids.append(src + [EOS_ID])
        tgt_ids.append(tgt + [EOS_ID])
    return EncodedPairs(src_ids, tgt_ids, dropped)


@dataclass(frozen=True)
class Batch:
    """Padded tensors for one forward pass.

    src [B, S]: source ids + EOS.  tgt_in [B, T]: BOS + target ids (what the decoder reads).
    tgt_out [B, T]: target ids + EOS (what it must predict); PAD where there is nothing to predict.
    src_segments [B, S]: segment ids of code-switched sources, -1 at padding (None for plain sources).
    """

    src: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    src_segments: Tensor | None = None

    @property
    def target_tokens(self) -> int:
        return int((self.tgt_out != PAD_ID).sum())


def make_batches(pairs: EncodedPairs, max_tokens: int, seed: int, epoch: int,
                 shuffle: bool = True) -> list[list[int]]:
    """Index lists, one per batch, of similar-length pairs with at most `max_tokens` padded tokens a side.

    `shuffle` False gives a fixed length-sorted order (validation).
    """
    rng = random.Random(f"batches/{seed}/{epoch}")  # a string seed hashes stably across processes
    tiebreak = [rng.random() for _ in range(len(pairs))] if shuffle else list(range(len(pairs)))
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs.tgt[i]), len(pairs.src[i]), tiebreak[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        length = max(len(pairs.src[index]), len(pairs.tgt[index]))
        if current and max(longest, length) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, length)
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


def collate(pairs: EncodedPairs, indices: Sequence[int]) -> Batch:
    """The padded Batch of pairs `indices`."""
    src = _pad([pairs.src[i] for i in indices])
    tgt_out = _pad([pairs.tgt[i] for i in indices])
    tgt_in = _pad([[BOS_ID] + pairs.tgt[i][:-1] for i in indices])
    segments = None if pairs.segments is None else _pad([pairs.segments[i] for i in indices], PADDING)
    return Batch(src=src, tgt_in=tgt_in, tgt_out=tgt_out, src_segments=segments)


def _pad(sequences: list[list[int]], fill: int = PAD_ID) -> Tensor:
    """Right-pad with `fill` into a [len(sequences), longest] LongTensor."""
    longest = max(len(sequence) for sequence in sequences)
    return torch.tensor([sequence + [fill] * (longest - len(sequence)) for sequence in sequences],
                        dtype=torch.long)
