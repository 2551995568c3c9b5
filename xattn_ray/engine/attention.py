"""Multi-head attention, split so keys and values can be cached.

Projecting keys/values (`project_keys_values`) is separate from attending (`forward`), so a decoder
computes the cross-attention keys and values of a source once and reuses them at every step, and
appends one step's self-attention keys and values to a cache instead of recomputing the prefix.

`CrossLingualSelfAttention` is the encoder self-attention of Foroutan et al. (2023): a second query
projection for attention across the languages of a code-switched source, and one softmax over the
scores of both queries, each masked by its own structured mask (`structured_dropout.py`).

In training the projections run on packed rows (`packing.py`): given a `packing`, a query or key/value
input is [N, D], the projections are scattered onto the [B, T] grid to attend, and the attended rows
are gathered back before `out_proj`. Without one, inputs are [B, T, D] (decoding).

Attending runs `scaled_dot_product_attention`'s fused kernel, except on a CPU for a decoding step and
for training with attention dropout, where two matrix products and a softmax are faster
(`by_matmuls_on_cpu`).

Shapes: B batch, T query length, S key length, H heads, D = d_model, Dh = D / H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xattn_ray.engine.dropout import dropout as attention_dropout
from xattn_ray.engine.packing import Packing, padded
from xattn_ray.engine.prepacked import Linear


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with H heads; parameters `q_proj`, `k_proj`, `v_proj`, `out_proj`."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.q_proj = Linear(d_model, d_model)
        self.k_proj = Linear(d_model, d_model)
        self.v_proj = Linear(d_model, d_model)
        self.out_proj = Linear(d_model, d_model)

    def split_heads(self, x: Tensor) -> Tensor:
        """[B, T, D] -> [B, H, T, Dh]."""
        batch, length, d_model = x.shape
        return x.view(batch, length, self.heads, d_model // self.heads).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """[B, H, T, Dh] -> [B, T, D]."""
        batch, _, length, _ = x.shape
        return x.transpose(1, 2).reshape(batch, length, -1)

    def project_keys_values(self, x: Tensor, packing: Packing | None = None) -> tuple[Tensor, Tensor]:
        """Keys and values of `x` [B, S, D] (or packed [N, D] with its `packing`), each [B, H, S, Dh]."""
        return (self.split_heads(padded(self.k_proj(x), packing)),
                self.split_heads(padded(self.v_proj(x), packing)))

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None = None,
                causal: bool = False, packing: Packing | None = None) -> Tensor:
        """Attend from queries `x` [B, T, D] to `keys`/`values` [B, H, S, Dh]; returns [B, T, D]
        (or from packed [N, D] to packed [N, D], given the queries' `packing`).

        `mask` [B, 1, 1 or T, S] is True where a query may look (False hides padding); `causal` hides
        later positions (training the decoder on a whole prefix at once).
        """
        queries = self.split_heads(padded(self.q_proj(x), packing))
        dropout = self.dropout if self.training else 0.0
        if by_matmuls_on_cpu(queries, dropout, causal):
            attended = attend_with_matmuls(queries, keys, values, mask, causal, dropout)
        else:
            attended = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, is_causal=causal,
                                                      dropout_p=dropout)
        return self.out_proj(self.merge(attended, packing))

    def merge(self, attended: Tensor, packing: Packing | None) -> Tensor:
        """[B, H, T, Dh] -> [B, T, D], or the packed rows [N, D] given a `packing`."""
        if packing is None:
            return self.merge_heads(attended)
        return packing.pack(attended.transpose(1, 2)).flatten(1)


# Up to this many queries a row, attention without dropout on a CPU is faster as two matrix products and
# a softmax than through `scaled_dot_product_attention`'s fused kernel: a beam-search step (1 query a
# hypothesis, or the K of a sentence in cross-attention) took 0.55 ms against 1.35 ms for 600 rows of
# 4 heads over 20 keys, and 0.27 against 0.37 ms for 48 sentences x 5 beams over 25 source positions
# (torch 2.13, 2 cores; docs/performance.md).
FEW_QUERIES = 8


def by_matmuls_on_cpu(queries: Tensor, dropout: float, causal: bool) -> bool:
    """Whether `attend_with_matmuls` is the faster way for queries [B, H, T, Dh] on their device: on a CPU,
    a decoding step (few queries, no dropout) and any attention with dropout. With dropout the fused
    kernel steps aside for PyTorch's unfused path, which does the same products plus copies, a check
    for empty rows and `bernoulli_` masks (engine/dropout.py): 9.5 against 11.9 ms forward and backward
    for 89 sentences x 8 heads x 21 queries over 23 keys."""
    if queries.device.type != "cpu":
        return False
    return bool(dropout) or (queries.shape[-2] <= FEW_QUERIES and not causal)


def attend_with_matmuls(queries: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None,
                        causal: bool = False, dropout: float = 0.0) -> Tensor:
    """dropout(softmax(Q K^T / sqrt(Dh))) V for queries [B, H, T, Dh] and keys/values [B, H, S, Dh] ->
    [B, H, T, Dh]. `mask` [B, 1, 1 or T, S] is True where a query may look; `causal` hides key j > i
    from query i. Every query must see at least one key (a row with none would be NaN)."""
    scores = queries @ keys.transpose(-2, -1) * keys.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, -torch.inf)
    if causal:
        later = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(later, -torch.inf)
    return attention_dropout(torch.softmax(scores, dim=-1), dropout) @ values


class CrossLingualSelfAttention(MultiHeadAttention):
    """Self-attention with a cross-lingual query `q_cross_proj` beside `q_proj`, sharing keys and values.

    With masks M1 and M2 (`structured_dropout.sample_masks`), the scores of the two queries

        S   = Q K^T / sqrt(Dh),        counted where M1 holds
        S_x = Q_cross K^T / sqrt(Dh),  counted where M2 holds

    share ONE softmax over keys: P = (exp(S - m) + exp(S_x - m)) / sum over keys of the same, with m
    the row's maximum over both and uncounted entries contributing 0; then attention dropout and P V.
    So a key reached by both queries gets both terms, and Q_cross = Q with all-ones masks is plain
    attention (each term doubled). Without masks (monolingual input) it is plain attention through
    the inherited SDPA path, Q_cross unused.
    """

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__(d_model, heads, dropout)
        self.q_cross_proj = Linear(d_model, d_model)
        self.init_cross_from_query()

    def init_cross_from_query(self) -> None:
        """Q_cross := Q (weight and bias), the authors' initialisation: the model starts as it was."""
        with torch.no_grad():
            self.q_cross_proj.weight.copy_(self.q_proj.weight)
            self.q_cross_proj.bias.copy_(self.q_proj.bias)

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None = None,
                causal: bool = False, packing: Packing | None = None,
                structured_masks: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Attend from `x` [B, T, D] (or packed [N, D] with its `packing`) to `keys`/`values`
        [B, H, S, Dh]; returns the shape of `x`.

        `structured_masks` (M1, M2), each [B, 1, T, S] bool, select the joint softmax; they already
        hide padding keys, so `mask` is not needed with them. None: plain attention with `mask`.
        """
        if structured_masks is None:
            return super().forward(x, keys, values, mask, causal, packing)
        if causal:
            raise ValueError("structured masks are for bidirectional (encoder) self-attention")
        m1, m2 = structured_masks
        queries = self.split_heads(padded(self.q_proj(x), packing))
        cross_queries = self.split_heads(padded(self.q_cross_proj(x), packing))
        scale = keys.shape[-1] ** -0.5
        scores = (queries @ keys.transpose(-2, -1) * scale).masked_fill(~m1, -torch.inf)  # [B, H, T, S]
        cross_scores = (cross_queries @ keys.transpose(-2, -1) * scale).masked_fill(~m2, -torch.inf)
        # The shift only guards exp() against overflow; softmax does not depend on it, so no gradient.
        shift = torch.maximum(scores.amax(dim=-1, keepdim=True), cross_scores.amax(dim=-1, keepdim=True)).detach()
        shift = shift.masked_fill(shift.isinf(), 0.0)  # a row with nothing counted stays all zeros
        weights = torch.exp(scores - shift) + torch.exp(cross_scores - shift)  # exp(-inf) = 0
        probabilities = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
        probabilities = attention_dropout(probabilities, self.dropout if self.training else 0.0)
        return self.out_proj(self.merge(probabilities @ values, packing))
