"""Linear layers that decode on weights prepacked for oneDNN, where that is faster: float32 on a CPU.

A decoding step multiplies few rows (B*K hypotheses) by every weight matrix. For such products
PyTorch's default CPU path (MKL's sgemm) runs well below the machine's peak, while oneDNN's linear on a
weight reordered once into its own blocked layout runs near it: the `base` output projection for 40
sentences x 5 beams, [200, 512] x [512, 8000], took 15.8 ms against 9.6 ms, and a `small` feed-forward
[200, 256] x [256, 1024] 0.68 against 0.51 ms (torch 2.13, 2 cores of an AMD EPYC; docs/performance.md).
Beam search got 1.12x faster at `small` and 1.20x at `base`, with the same translations.

`Linear` is `nn.Linear` (same parameters, same names) plus an optional `packed` copy of its weight that
its forward uses while one is set; `Transformer.prepacked` sets them for the length of a search and
removes them after, so training never meets a stale copy. The two operators are PyTorch's own
(`torch.ops.mkldnn`, which its compiler's CPU backend calls); where they are missing, or the model is on
a GPU or not float32, `pack` returns None and everything runs as plain `nn.Linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def can_pack(weight: Tensor) -> bool:
    """Whether oneDNN can take this weight: float32, on a CPU, with PyTorch's oneDNN operators present."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def pack(weight: Tensor) -> Tensor | None:
    """weight [out, in] reordered into oneDNN's layout (a copy), or None where `can_pack` says no."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach()) if can_pack(weight) else None


def packed_linear(x: Tensor, packed: Tensor | None, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x [..., in] times weight [out, in], plus bias [out] -> [..., out]: on the `pack`ed copy of the
    weight when there is one and x is plain float32 (no autocast: a bf16 input must not meet a float32
    packed weight); `F.linear` otherwise. The packed path has no autograd."""
    if packed is None or x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type):
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class Linear(nn.Linear):
    """`nn.Linear` that uses its `packed` weight (set only while decoding, without autograd) when it has one."""

    packed: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        return packed_linear(x, self.packed, self.weight, self.bias)
