"""Packed batches: position-wise work on the real tokens only, attention on the padded grid, and the
same result for every real position as each sentence alone."""

import pytest
import torch

from xattn_ray.engine.model import Transformer, preset_config
from xattn_ray.engine.packing import Packing
from xattn_ray.engine.tokenizer import BOS_ID, EOS_ID, PAD_ID


def ragged(lengths: list[int], vocab: int, generator: torch.Generator, start: int | None = None) -> torch.Tensor:
    """Right-padded ids [len(lengths), max(lengths)], optionally starting with `start` (BOS)."""
    rows = torch.full((len(lengths), max(lengths)), PAD_ID)
    for row, length in enumerate(lengths):
        rows[row, :length] = torch.randint(4, vocab, (length,), generator=generator)
        if start is not None:
            rows[row, 0] = start
    return rows


def test_pack_keeps_the_real_positions_in_order_and_pad_puts_them_back():
    ids = torch.tensor([[5, 6, 7], [8, PAD_ID, PAD_ID]])
    packing = Packing.of(ids)
    assert packing.index.tolist() == [0, 1, 2, 3] and packing.positions.tolist() == [0, 1, 2, 0]
    features = torch.arange(6.0).view(2, 3, 1) + 1
    rows = packing.pack(features)
    assert rows.squeeze(1).tolist() == [1, 2, 3, 4]
    assert packing.pad(rows).squeeze(2).tolist() == [[1, 2, 3], [4, 0, 0]]


def test_without_padding_packing_is_a_reshape():
    packing = Packing.of(torch.tensor([[5, 6], [7, 8]]))
    features = torch.randn(2, 2, 3)
    assert packing.dense
    assert packing.pack(features).data_ptr() == features.data_ptr()
    assert packing.pad(packing.pack(features)).data_ptr() == features.data_ptr()


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_each_sentence_of_a_padded_batch_gets_the_logits_it_gets_alone(norm):
    """Padding on both sides, of different amounts per sentence: the packed batch's logits at every
    target position equal those of the sentence decoded on its own, with no padding anywhere."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    model = Transformer(preset_config("tiny", 20, 24, norm=norm)).eval()
    src = ragged([7, 3, 5, 1], 20, generator)
    src[torch.arange(4), torch.tensor([6, 2, 4, 0])] = EOS_ID
    tgt_in = ragged([2, 6, 4, 5], 24, generator, start=BOS_ID)
    keep = tgt_in != PAD_ID
    batched = model(src, tgt_in, keep)  # [real target positions, V]
    alone = [model(src[i:i + 1, :int((src[i] != PAD_ID).sum())], tgt_in[i:i + 1, :int(keep[i].sum())])[0]
             for i in range(4)]
    torch.testing.assert_close(batched, torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_keep_must_not_mark_padding():
    model = Transformer(preset_config("tiny", 20, 24)).eval()
    tgt_in = torch.tensor([[BOS_ID, 5, PAD_ID], [BOS_ID, 6, 7]])
    with pytest.raises(ValueError, match="keep marks padding positions"):
        model(torch.tensor([[5, EOS_ID], [6, EOS_ID]]), tgt_in, torch.ones(2, 3, dtype=torch.bool))
