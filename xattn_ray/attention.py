"""Multi-head attention over `scaled_dot_product_attention`, split so keys and values can be cached.

Projecting keys/values (`project_keys_values`) is separate from attending (`forward`), so a decoder
computes the cross-attention keys and values of a source once and reuses them at every step, and
appends one step's self-attention keys and values to a cache instead of recomputing the prefix.

Shapes: B batch, T query length, S key length, H heads, D = d_model, Dh = D / H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with H heads; parameters `q_proj`, `k_proj`, `v_proj`, `out_proj`."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def split_heads(self, x: Tensor) -> Tensor:
        """[B, T, D] -> [B, H, T, Dh]."""
        batch, length, d_model = x.shape
        return x.view(batch, length, self.heads, d_model // self.heads).transpose(1, 2)

    def project_keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of `x` [B, S, D], each [B, H, S, Dh]."""
        return self.split_heads(self.k_proj(x)), self.split_heads(self.v_proj(x))

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None = None,
                causal: bool = False) -> Tensor:
        """Attend from queries `x` [B, T, D] to `keys`/`values` [B, H, S, Dh]; returns [B, T, D].

        `mask` [B, 1, 1 or T, S] is True where a query may look (False hides padding); `causal` hides
        later positions (training the decoder on a whole prefix at once).
        """
        queries = self.split_heads(self.q_proj(x))
        attended = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0)
        batch, _, length, _ = attended.shape
        return self.out_proj(attended.transpose(1, 2).reshape(batch, length, -1))
