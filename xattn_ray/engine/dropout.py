"""Dropout whose masks a CPU draws quickly: 16 random bits an element from 64-bit words.

PyTorch's CPU dropout draws its mask with `bernoulli_`, one call of the Mersenne Twister and one
conversion to a float per element, in a single thread: 5-6 ns an element on the 2-core test machine,
6-8% of a `base` training step, and the same in every freeze policy, so it also dilutes what freezing
saves (docs/performance.md). Here every 64-bit word drawn from the same generator gives four 16-bit
numbers u, uniform on 0..65535; an element is kept when u >= t with t = round(p * 65536), so it is
dropped with probability t / 65536 (within 1/131072 of p: 0.100006 for p = 0.1), and a kept element is
scaled by 65536 / (65536 - t), the exact inverse of its keeping probability, so the output's expectation
is the input. The words come from the default generator, so a seed or a saved RNG state reproduces the
masks (exact resume). On other devices `F.dropout` runs: a GPU's generator is fast.

The mask is kept as the float tensor of scales (0 or 65536 / (65536 - t)) that multiplies the input,
which autograd saves for the backward pass: one multiplication each way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEVELS = 1 << 16  # 16-bit numbers


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """x with each element zeroed with probability ~p (t / 65536 on a CPU) and the rest scaled up."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training)
    threshold = min(round(p * LEVELS), LEVELS - 1)
    if threshold == 0:
        return x
    words = torch.empty(math.ceil(x.numel() / 4), dtype=torch.int64).random_(-(1 << 63), None)
    # Signed 16-bit views of uniform words are uniform on -32768..32767: u - 32768 for u uniform on 0..65535.
    numbers = words.view(torch.int16)[:x.numel()].view(x.shape)
    scales = (numbers >= threshold - LEVELS // 2).to(x.dtype).mul_(LEVELS / (LEVELS - threshold))
    return x * scales


class Dropout(nn.Dropout):
    """`nn.Dropout` with CPU masks drawn by `dropout` (no parameters: state dicts are unchanged)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
