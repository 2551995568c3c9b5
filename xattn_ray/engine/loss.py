"""The training loss: label-smoothed cross-entropy of the output projection, summed over target tokens,
computed a block of rows at a time so the [N, V] logits never exist whole on a CPU.

Projecting N target positions onto a V-word vocabulary makes [N, V] logits; the usual path then writes
their log-softmax, reads both for the loss, and in the backward pass fills, adds to and reads tensors of
that size several times more. Those passes move memory rather than compute, and on a CPU they are what
an OPUS-MT-sized child spends a third of its step on (V = 58,101: 350 MB per pass for 1,500 tokens;
docs/performance.md). Here the loss is computed over blocks of rows whose logits stay small
(`BLOCK_ELEMENTS`, at least D rows), and, since the loss is a sum, each block's gradients with respect
to the hidden states, the projection's weight and its bias are computed right away from the block's
softmax and kept for the backward pass, which only scales them by the incoming gradient.

With label smoothing e over V classes (PyTorch's definition), a row with target y and log-probabilities
log p contributes (1 - e) * (-log p_y) + (e / V) * sum_v (-log p_v), whose gradient with respect to the
logits is p - (1 - e) * onehot(y) - e / V.

On a GPU, where memory bandwidth is plentiful and bf16 autocast applies, the usual path runs.

Shapes: N target positions, D model width, V vocabulary size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Elements of one block's logits: 16 MB of float32, small enough for the allocator to reuse the memory
# of the previous block instead of mapping fresh pages for each; but never fewer rows than the model's
# width (`blockwise`).
BLOCK_ELEMENTS = 1 << 22


def output_loss(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                label_smoothing: float = 0.0) -> Tensor:
    """Summed cross-entropy of logits hidden [N, D] @ weight [V, D]^T + bias [V] against targets [N]."""
    if hidden.device.type != "cpu":
        logits = F.linear(hidden, weight, bias).float()
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction="sum")
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if needs_grad:
        return BlockwiseCrossEntropy.apply(hidden, weight, bias, targets, label_smoothing)
    return blockwise(hidden, weight, bias, targets, label_smoothing, (False, False, False))[0]


def blockwise(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, label_smoothing: float,
              wanted: tuple[bool, bool, bool]) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """(summed loss, and the gradients of that sum with respect to hidden, weight and bias where `wanted`)."""
    vocab, width = weight.shape
    # Each block reads the whole [V, D] weight twice (its logits, then its hidden states' gradient); with
    # fewer than D rows those reads outweigh the [rows, V] logits it writes and reads. A 58,101-piece
    # vocabulary in 72-row blocks read its 119 MB weight 42 times for 1,500 target tokens: 1.86 s for the
    # loss and its gradients, against 1.49 s in 512-row blocks.
    rows = max(BLOCK_ELEMENTS // vocab, width)
    grad_hidden = torch.empty_like(hidden) if wanted[0] else None
    grad_weight = torch.zeros_like(weight) if wanted[1] else None
    grad_bias = torch.zeros_like(bias) if wanted[2] and bias is not None else None
    precision = torch.promote_types(hidden.dtype, torch.float32)  # the softmax in float32 at least
    total = hidden.new_zeros((), dtype=precision)
    for start in range(0, len(hidden), rows):
        block, block_targets = hidden[start:start + rows], targets[start:start + rows]
        log_probs = torch.log_softmax(F.linear(block, weight, bias), dim=-1, dtype=precision)  # [rows, V]
        picked = log_probs.gather(1, block_targets[:, None]).sum()
        total -= (1 - label_smoothing) * picked
        if label_smoothing:
            total -= label_smoothing / vocab * log_probs.sum()
        if not any(wanted):
            continue
        grad_logits = log_probs.exp_()  # the softmax, in place of the log-probabilities
        if label_smoothing:
            grad_logits -= label_smoothing / vocab
        grad_logits[torch.arange(len(block)), block_targets] -= 1 - label_smoothing
        grad_logits = grad_logits.to(hidden.dtype)
        if grad_hidden is not None:
            grad_hidden[start:start + rows] = grad_logits @ weight
        if grad_weight is not None:
            grad_weight.addmm_(grad_logits.T, block)
        if grad_bias is not None:
            grad_bias += grad_logits.sum(0)
    return total, grad_hidden, grad_weight, grad_bias


class BlockwiseCrossEntropy(torch.autograd.Function):
    """`blockwise` as an autograd function: the gradients come from the forward pass."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                label_smoothing: float) -> Tensor:
        total, *ctx.gradients = blockwise(hidden, weight, bias, targets, label_smoothing,
                                          tuple(ctx.needs_input_grad[:3]))
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        scaled = [None if grad is None else grad * grad_total for grad in ctx.gradients]
        return *scaled, None, None
