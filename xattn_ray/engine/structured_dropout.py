"""Structured attention dropout: the two attention masks of the cross-lingual query (Foroutan et al. 2023).

A code-switched source is a language-neutral first token followed by two segments in two languages.
Each token carries a *segment id*:

    0   the first token (BOS, playing the role of BERT's [CLS])
    1   segment one (language one)
    2   segment two (language two)
   -1   padding

Two boolean masks [B, 1, S, S] (query x key, shared by all heads and layers) say which scores count:

    M1, for the ordinary query Q:     every within-segment entry; each cross-segment entry kept with
                                      probability `mono`
    M2, for the cross query Q_cross:  every cross-segment entry; each within-segment entry kept with
                                      probability `cross`

In both, the first token's row and column are always kept (it bridges the two segments), and padding
keys never are. Training uses the authors' alphas 0.3 / 0.3, so each query partly does the other's
work (they found such interfering masks generalise better); evaluation uses 0 / 0, the exact block
pattern: M1 within segments, M2 across them. Masks are drawn anew on every call, so an example drawn
again in another epoch gets other masks, as in the authors' code (docs/paper.md, "Structured dropout masks").

An example without segment 2 is monolingual, which the authors run with plain attention (their
`is_mono` path, with M1 all ones: their `mono_alpha` 1.0). Here its M1 keeps every non-padding key
and its M2 nothing, so the joint softmax over both reduces to plain attention for that example even
inside a batch with code-switched ones.

Shapes: B batch, S source length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from xattn_ray.schema import Invalid

FIRST, SEGMENT_ONE, SEGMENT_TWO, PADDING = 0, 1, 2, -1  # segment ids


@dataclass(frozen=True)
class MaskAlphas:
    """Keeping probabilities (alpha = 1 - P_mask) of the entries each mask may drop."""

    mono: float  # M1 (query Q): each cross-segment entry
    cross: float  # M2 (query Q_cross): each within-segment entry

    def __post_init__(self) -> None:
        for key in ("mono", "cross"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise Invalid(key, f"a keeping probability must be in [0, 1], got {getattr(self, key)}")


TRAINING_ALPHAS = MaskAlphas(mono=0.3, cross=0.3)  # the authors' code-switched fine-tuning
EVALUATION_ALPHAS = MaskAlphas(mono=0.0, cross=0.0)  # the exact block pattern


def is_code_switched(segments: Tensor) -> bool:
    """Whether any example of segments [B, S] has a second segment (otherwise plain attention serves)."""
    return bool((segments == SEGMENT_TWO).any())


def sample_masks(segments: Tensor, alphas: MaskAlphas,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw M1 and M2, each [B, 1, S, S] bool (True = the score counts), for segments [B, S].

    `generator` (on any device) makes the draw reproducible; None uses torch's global generator.
    """
    batch, length = segments.shape
    query, key = segments[:, :, None], segments[:, None, :]  # [B, S, 1], [B, 1, S]
    within = query == key
    first = (query == FIRST) | (key == FIRST)  # the first token's row and column
    real_key = key != PADDING
    switched = (segments == SEGMENT_TWO).any(dim=1)[:, None, None]  # [B, 1, 1]

    def keep(alpha: float) -> Tensor:
        """[B, S, S] bool, each entry True with probability alpha."""
        if alpha in (0.0, 1.0):  # no draw: evaluation consumes no random numbers, as plain dropout
            return torch.full((batch, length, length), alpha == 1.0, device=segments.device)
        device = segments.device if generator is None else generator.device
        draw = torch.rand((batch, length, length), generator=generator, device=device)
        return (draw < alpha).to(segments.device)

    # A monolingual example: every key in M1, nothing in M2, which is plain attention.
    m1 = real_key & (within | first | ~switched | keep(alphas.mono))
    m2 = real_key & switched & (~within | first | keep(alphas.cross))
    return m1[:, None], m2[:, None]


class StructuredDropout(nn.Module):
    """Draws the masks with the training alphas in training mode and the evaluation alphas in eval mode.

    A module without parameters, so it follows `model.train()` / `model.eval()` and adds no names.
    """

    def __init__(self, training: MaskAlphas = TRAINING_ALPHAS, evaluation: MaskAlphas = EVALUATION_ALPHAS):
        super().__init__()
        self.training_alphas = training
        self.evaluation_alphas = evaluation

    def forward(self, segments: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """segments [B, S] -> (M1, M2), each [B, 1, S, S] bool, drawn anew on every call."""
        alphas = self.training_alphas if self.training else self.evaluation_alphas
        return sample_masks(segments, alphas, generator)
