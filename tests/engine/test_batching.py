"""Batches over lengths arrays: identical to the list-based implementation they replaced, disjoint DDP shares."""

import random

import numpy as np
import pytest

from xattn_ray.engine.batching import EncodedPairs, collate, make_batches, rank_share
from xattn_ray.engine.tokenizer import BOS_ID, EOS_ID, PAD_ID


def reference_batches(pairs: EncodedPairs, max_tokens: int, seed: int, epoch: int, shuffle: bool = True) -> list:
    """`make_batches` as it was before token shards (lists of Python ints): resumed runs depend on equality."""
    rng = random.Random(f"batches/{seed}/{epoch}")
    tiebreak = [rng.random() for _ in range(len(pairs))] if shuffle else list(range(len(pairs)))
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs.tgt[i]), len(pairs.src[i]), tiebreak[i]))
    batches, current, longest = [], [], 0
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


def random_pairs(n: int, seed: int, longest: int) -> EncodedPairs:
    rng = random.Random(seed)
    src = [[5] * rng.randrange(1, longest) + [EOS_ID] for _ in range(n)]
    tgt = [[6] * rng.randrange(1, longest) + [EOS_ID] for _ in range(n)]
    return EncodedPairs(src, tgt)


@pytest.mark.parametrize("n, longest, max_tokens", [(1, 5, 100), (7, 5, 3), (500, 30, 64), (3000, 120, 1000),
                                                    (20000, 60, 4096)])
def test_batches_are_those_of_the_list_based_implementation(n, longest, max_tokens):
    pairs = random_pairs(n, n, longest)
    for seed, epoch in [(1, 0), (1, 1), (7, 3), (2**32 - 1, 12)]:
        assert make_batches(pairs, max_tokens, seed, epoch).tolist() == reference_batches(pairs, max_tokens, seed, epoch)
    assert make_batches(pairs, max_tokens, 0, 0, shuffle=False).tolist() == \
        reference_batches(pairs, max_tokens, 0, 0, shuffle=False)


def test_rank_shares_are_disjoint_and_cover_the_batch():
    pairs = random_pairs(400, 3, 20)
    for batch in make_batches(pairs, 200, seed=1, epoch=0):
        for world_size in (1, 2, 3):
            shares = [rank_share(batch, rank, world_size) for rank in range(world_size)]
            assert sorted(np.concatenate(shares).tolist()) == sorted(batch.tolist())
            assert sum(map(len, shares)) == len(batch)


def test_collate_pads_and_shifts_the_target():
    pairs = EncodedPairs([[4, 5, EOS_ID], [7, EOS_ID]], [[8, EOS_ID], [9, 10, 11, EOS_ID]])
    batch = collate(pairs, np.array([0, 1]))
    assert batch.src.tolist() == [[4, 5, EOS_ID], [7, EOS_ID, PAD_ID]]
    assert batch.tgt_out.tolist() == [[8, EOS_ID, PAD_ID, PAD_ID], [9, 10, 11, EOS_ID]]
    assert batch.tgt_in.tolist() == [[BOS_ID, 8, PAD_ID, PAD_ID], [BOS_ID, 9, 10, 11]]
    assert batch.src_segments is None
