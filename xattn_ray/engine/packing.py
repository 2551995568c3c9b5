"""Packed batches: the real tokens of a right-padded batch as the rows of one matrix, so that
position-wise work skips the padding.

A batch of B sequences padded to T positions holds N <= B*T real tokens. Everything in a Transformer
layer except attention treats each position on its own (embeddings, layer norms, every linear layer,
the feed-forward block, dropout, residual sums), so the training step runs those on packed [N, D] rows;
attention alone needs the [B, T] grid, and gets it by scattering its projections into a grid of zeros
(`pad`) and gathering the attended rows back (`pack`). Every real position gets what the padded
computation gives it; the padding costs no matrix multiplication. Length-sorted batches still carry
10-30% padding (a target-sorted batch's sources vary in length), and the linear layers are most of a
step's time, so this is most of what the engine gains over a padded implementation (docs/performance.md).

Shapes: B batch, T padded length, N real tokens (row-major: sentence by sentence), F any feature width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from xattn_ray.engine.tokenizer import PAD_ID


@dataclass(frozen=True)
class Packing:
    """Where the N real tokens of a right-padded [B, T] batch sit: row i of a packed tensor is flat
    position `index[i]` = b*T + t of the grid, at position `positions[i]` = t of its sentence."""

    index: Tensor  # [N] int64, increasing
    positions: Tensor  # [N] int64
    batch: int
    length: int

    @classmethod
    def of(cls, ids: Tensor) -> Packing:
        """The packing of token ids [B, T], padding (PAD_ID) at the ends of the rows."""
        batch, length = ids.shape
        index = (ids != PAD_ID).flatten().nonzero().squeeze(1)
        return cls(index, index % length, batch, length)

    @property
    def dense(self) -> bool:
        """No padding at all: packing and padding are reshapes."""
        return self.index.numel() == self.batch * self.length

    def pack(self, x: Tensor) -> Tensor:
        """[B, T, ...] -> [N, ...]: the real positions' rows (x may be a non-contiguous view)."""
        flat = x.reshape(self.batch * self.length, *x.shape[2:])
        return flat if self.dense else flat.index_select(0, self.index)

    def pad(self, x: Tensor) -> Tensor:
        """[N, F] -> [B, T, F], zeros at the padding."""
        if not self.dense:
            x = x.new_zeros(self.batch * self.length, x.shape[-1]).index_copy_(0, self.index, x)
        return x.view(self.batch, self.length, -1)

    def select(self, keep: Tensor) -> Tensor | None:
        """Which packed rows `keep` [B, T] marks, [N] bool, or None when it marks every one; raises if it
        marks a padding position. One read of the device (a GPU waits once)."""
        chosen = self.pack(keep)
        marked, real = torch.stack([keep.sum(), chosen.sum()]).tolist()
        if marked != real:
            raise ValueError("keep marks padding positions of tgt_in; it must mark real target positions")
        return None if real == len(chosen) else chosen


def padded(x: Tensor, packing: Packing | None) -> Tensor:
    """Packed [N, F] back on the [B, T, F] grid when `packing` is given; unchanged otherwise."""
    return x if packing is None else packing.pad(x)

