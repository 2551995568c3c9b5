"""The encoder-decoder Transformer of the paper's code, with parameter names that freeze policies select.

Architecture (Gheini et al. 2021 used fairseq's transformer with these flags; docs/paper.md, "Architecture"):
pre-norm layers (layer norm before each sub-layer) and a final layer norm in encoder and decoder;
learned positional embeddings; a layer norm on the embedding sum; no sqrt(d) embedding scaling;
separate source and target vocabularies; the target token embeddings double as the output projection.

Five options hold the pretrained models researchers start from (`pretrained.py`), with the same
parameter names, so every policy, the KV cache and every analysis work on them unchanged. A Marian
(OPUS-MT) model is `norm: post` (layer norm after each residual sum, no final norms), `positions:
sinusoidal` (a fixed table, not a parameter), `scale_embedding` (tokens times sqrt(D)), no
`embedding_norm`, `activation: silu` and `logits_bias` (a bias on the output logits).

Parameter names are the vocabulary of freeze policies (`policies.py`), so they are stable:

    src_embed.{tokens,positions,norm}.*                      the source embedding group  (`src`)
    tgt_embed.{tokens,positions,norm,logits_bias}*           the target embedding group  (`tgt`;
                                                             tokens.weight is also the output layer)
    encoder.layers.N.{self_attn_norm,self_attn,ffn_norm,ffn}.*
    encoder.final_norm.*                                     (`norm: pre` only)
    decoder.layers.N.{self_attn_norm,self_attn,cross_attn_norm,cross_attn,ffn_norm,ffn}.*
    decoder.final_norm.*
    ...attn.{q_proj,k_proj,v_proj,out_proj}.{weight,bias}   ffn.{fc1,fc2}.{weight,bias}

`decoder.layers.N.cross_attn*` is the `xattn` group: the cross-attention and its layer norm (before
it in pre-norm, after its residual sum in post-norm). `positions` is a parameter only when learned,
`norm` only with `embedding_norm`, `logits_bias` only with that option.

With `attention: xlquery` (Foroutan et al. 2023) each encoder self-attention also has a cross-lingual
query, `encoder.layers.N.self_attn.q_cross_proj.{weight,bias}` (the `xlquery` group), used on
code-switched sources given with their segment ids (`structured_dropout.py`); every other name and
shape is the standard model's, so a trained standard model converts by copying (`transfer.to_xlquery`).

Training runs on packed batches (`packing.py`): the real tokens' rows [N, D] go through every
position-wise part, and only attention sees the padded [B, T] grid, so padding costs no matrix product.
Decoding runs on [B, T, D] as it has no padding to skip.

Shapes: B batch, S source length, T target length, D d_model, V vocabulary size, N real tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xattn_ray.engine.attention import CrossLingualSelfAttention, MultiHeadAttention
from xattn_ray.engine.dropout import Dropout
from xattn_ray.engine.loss import output_loss
from xattn_ray.engine.packing import Packing
from xattn_ray.engine.prepacked import Linear, pack, packed_linear
from xattn_ray.engine.structured_dropout import (EVALUATION_ALPHAS, PADDING, TRAINING_ALPHAS, MaskAlphas,
                                                 StructuredDropout, is_code_switched)
from xattn_ray.engine.tokenizer import PAD_ID
from xattn_ray.schema import Invalid


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the model's shapes and regularisation; checkpoints carry it."""

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 512  # width of every residual stream
    ffn_dim: int = 2048  # hidden width of the feed-forward blocks
    heads: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 6
    max_positions: int = 1024  # rows of each learned position table (longest sequence + BOS/EOS)
    dropout: float = 0.1  # on embeddings, sub-layer outputs
    attention_dropout: float = 0.1  # on attention probabilities
    activation_dropout: float = 0.0  # inside the feed-forward block, after the ReLU
    # Encoder self-attention: `standard`, or `xlquery` (a cross-lingual query with structured masks).
    attention: Literal["standard", "xlquery"] = "standard"
    # xlquery's keeping probabilities (structured_dropout.py): M1's cross-segment entries (mono) and
    # M2's within-segment entries (cross), in training and in evaluation (0 / 0: the block pattern).
    mono_alpha: float = TRAINING_ALPHAS.mono
    cross_alpha: float = TRAINING_ALPHAS.cross
    eval_mono_alpha: float = EVALUATION_ALPHAS.mono
    eval_cross_alpha: float = EVALUATION_ALPHAS.cross
    # The options of pretrained architectures (module docstring); the defaults are the paper's model.
    norm: Literal["pre", "post"] = "pre"  # layer norm before each sub-layer (+ final norms), or after
    positions: Literal["learned", "sinusoidal"] = "learned"
    scale_embedding: bool = False  # token embeddings times sqrt(d_model)
    embedding_norm: bool = True  # a layer norm on the embedding sum
    activation: Literal["relu", "gelu", "silu"] = "relu"  # inside the feed-forward block
    logits_bias: bool = False  # a bias on the output logits (Marian's `final_logits_bias`)

    def __post_init__(self) -> None:
        # The alphas are checked (MaskAlphas) where they are used: when an xlquery encoder is built.
        # Invalid is a ValueError naming the field, so an experiment file's `model:` error names its key.
        if self.attention not in ("standard", "xlquery"):
            raise Invalid("attention", f"must be 'standard' or 'xlquery', got {self.attention!r}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise Invalid(name, f"must be one of {', '.join(map(repr, allowed))}, got {getattr(self, name)!r}")
        for name in ("scale_embedding", "embedding_norm", "logits_bias"):
            if not isinstance(getattr(self, name), bool):
                raise Invalid(name, f"must be true or false, got {getattr(self, name)!r}")
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "ffn_dim", "heads", "encoder_layers",
                     "decoder_layers"):
            if getattr(self, name) < 1:
                raise Invalid(name, f"must be at least 1, got {getattr(self, name)}")
        if self.max_positions < 3:  # BOS, one token, EOS
            raise Invalid("max_positions", f"must be at least 3, got {self.max_positions}")
        if self.d_model % self.heads:
            raise Invalid("heads", f"d_model {self.d_model} is not divisible by {self.heads} heads")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise Invalid(name, f"a dropout probability must be in [0, 1), got {getattr(self, name)!r}")

    @property
    def training_alphas(self) -> MaskAlphas:
        return MaskAlphas(self.mono_alpha, self.cross_alpha)

    @property
    def evaluation_alphas(self) -> MaskAlphas:
        return MaskAlphas(self.eval_mono_alpha, self.eval_cross_alpha)


# The allowed values of the options that name a variant.
CHOICES: dict[str, tuple[str, ...]] = {
    "norm": ("pre", "post"), "positions": ("learned", "sinusoidal"), "activation": ("relu", "gelu", "silu")}
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


# The presets named by experiments; any field can still be overridden.
PRESETS: dict[str, dict[str, int]] = {
    "base": dict(d_model=512, ffn_dim=2048, heads=8, encoder_layers=6, decoder_layers=6),  # the paper's
    "small": dict(d_model=256, ffn_dim=1024, heads=4, encoder_layers=3, decoder_layers=3),  # Multi30k on a CPU
    "tiny": dict(d_model=32, ffn_dim=64, heads=2, encoder_layers=2, decoder_layers=2, max_positions=128),  # tests
}


def preset_config(preset: str, src_vocab_size: int, tgt_vocab_size: int, **overrides) -> ModelConfig:
    """The ModelConfig of a named preset, with `overrides` applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r} (known: {', '.join(PRESETS)})")
    return ModelConfig(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size,
                       **{**PRESETS[preset], **overrides})


class Embedding(nn.Module):
    """Token plus position embeddings, then (fairseq's `layernorm_embedding`) a layer norm.

    The target side's embedding (`output=True`) is also the output layer: its token embeddings are the
    projection onto the vocabulary, plus `logits_bias` [V] when the config has one.
    """

    def __init__(self, vocab_size: int, config: ModelConfig, output: bool = False):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, config.d_model, padding_idx=PAD_ID)
        self.scale = config.d_model ** 0.5 if config.scale_embedding else 1.0
        self.positions = (nn.Embedding(config.max_positions, config.d_model) if config.positions == "learned"
                          else SinusoidalPositions(config.max_positions, config.d_model))
        self.norm = nn.LayerNorm(config.d_model) if config.embedding_norm else nn.Identity()
        self.logits_bias = nn.Parameter(torch.zeros(vocab_size)) if output and config.logits_bias else None
        self.dropout = Dropout(config.dropout)
        self.max_positions = config.max_positions

    def forward(self, ids: Tensor, start: int = 0, packing: Packing | None = None) -> Tensor:
        """[B, T] token ids at positions start..start+T-1 -> [B, T, D]; with the `packing` of `ids`,
        the real tokens' rows [N, D]."""
        length = ids.shape[1]
        if start + length > self.max_positions:
            raise ValueError(f"sequence of {start + length} positions exceeds max_positions {self.max_positions}")
        if packing is None:
            positions = torch.arange(start, start + length, device=ids.device)
        else:
            ids, positions = packing.pack(ids), packing.positions + start
        return self.dropout(self.norm(self.tokens(ids) * self.scale + self.positions(positions)))


class SinusoidalPositions(nn.Module):
    """Fixed position vectors [max_positions, D]: sin(p / 10000^(2i/D)) in the first half of each, cos in
    the second (Marian's layout, not interleaved), computed in float64 and rounded once.

    A buffer rebuilt from the config, not a parameter: no policy trains it and checkpoints do not carry it.
    """

    def __init__(self, max_positions: int, d_model: int):
        super().__init__()
        exponents = 2 * torch.div(torch.arange(d_model), 2, rounding_mode="floor") / d_model
        angles = torch.arange(max_positions, dtype=torch.float64)[:, None] / 10000 ** exponents.double()
        table = torch.cat([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=1).float()
        self.register_buffer("table", table, persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        """[T] positions -> [T, D]."""
        return self.table[positions]


class FeedForward(nn.Module):
    """Position-wise D -> ffn_dim -> D with the config's activation (ReLU by default)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc1 = Linear(config.d_model, config.ffn_dim)
        self.fc2 = Linear(config.ffn_dim, config.d_model)
        self.activation = ACTIVATIONS[config.activation]
        self.activation_dropout = Dropout(config.activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation_dropout(self.activation(self.fc1(x))))


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each added back to the residual stream; each sub-layer's layer
    norm comes before it (pre-norm) or after the residual sum (post-norm)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(config.d_model)
        attention = CrossLingualSelfAttention if config.attention == "xlquery" else MultiHeadAttention
        self.self_attn = attention(config.d_model, config.heads, config.attention_dropout)
        self.ffn_norm = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config)
        self.dropout = Dropout(config.dropout)
        self.pre_norm = config.norm == "pre"

    def forward(self, x: Tensor, src_mask: Tensor, structured_masks: tuple[Tensor, Tensor] | None = None,
                packing: Packing | None = None) -> Tensor:
        """x [B, S, D] (or packed [N, D] with its `packing`), src_mask [B, 1, 1, S] -> the shape of x.

        `structured_masks` (M1, M2) [B, 1, S, S] (xlquery on code-switched input) replace `src_mask`.
        """
        def attend(h: Tensor) -> Tensor:
            keys, values = self.self_attn.project_keys_values(h, packing)
            if structured_masks is None:
                return self.self_attn(h, keys, values, mask=src_mask, packing=packing)
            return self.self_attn(h, keys, values, packing=packing, structured_masks=structured_masks)

        x = residual(x, attend, self.self_attn_norm, self.dropout, self.pre_norm)
        return residual(x, self.ffn, self.ffn_norm, self.dropout, self.pre_norm)


def residual(x: Tensor, sublayer, norm: nn.Module, dropout: nn.Module, pre_norm: bool) -> Tensor:
    """x + dropout(sublayer(norm(x))) in pre-norm; norm(x + dropout(sublayer(x))) in post-norm."""
    if pre_norm:
        return x + dropout(sublayer(norm(x)))
    return norm(x + dropout(sublayer(x)))


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the source, feed-forward; pre- or post-norm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(config.d_model)
        self.self_attn = MultiHeadAttention(config.d_model, config.heads, config.attention_dropout)
        self.cross_attn_norm = nn.LayerNorm(config.d_model)
        self.cross_attn = MultiHeadAttention(config.d_model, config.heads, config.attention_dropout)
        self.ffn_norm = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config)
        self.dropout = Dropout(config.dropout)
        self.pre_norm = config.norm == "pre"

    def forward(self, x: Tensor, cross_kv: tuple[Tensor, Tensor], src_mask: Tensor,
                past_kv: tuple[Tensor, Tensor] | None = None,
                packing: Packing | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [B, T, D] -> (x [B, T, D], this layer's self-attention keys/values [B, H, t, Dh]).

        Training passes whole prefixes (`past_kv` None, causal mask), packed [N, D] with their
        `packing`: right padding comes after every real position, so the causal mask already hides
        it. Incremental decoding passes the newest position only, with the keys/values of the
        earlier positions in `past_kv`.
        """
        kv: list[tuple[Tensor, Tensor]] = []  # this step's keys/values, kept for the next step

        def attend_to_prefix(h: Tensor) -> Tensor:
            keys, values = self.self_attn.project_keys_values(h, packing)
            if past_kv is not None:
                keys, values = torch.cat([past_kv[0], keys], dim=2), torch.cat([past_kv[1], values], dim=2)
            kv.append((keys, values))
            return self.self_attn(h, keys, values, causal=past_kv is None, packing=packing)

        x = residual(x, attend_to_prefix, self.self_attn_norm, self.dropout, self.pre_norm)
        x = residual(x, lambda h: self.cross_attend(h, cross_kv, src_mask, packing), self.cross_attn_norm,
                     self.dropout, self.pre_norm)
        return residual(x, self.ffn, self.ffn_norm, self.dropout, self.pre_norm), kv[0]

    def cross_attend(self, x: Tensor, cross_kv: tuple[Tensor, Tensor], src_mask: Tensor,
                     packing: Packing | None = None) -> Tensor:
        """Cross-attention from x [B*K, T, D] to the keys/values [B, H, S, Dh] of B sources (or from
        packed [N, D], K = 1, with its `packing`).

        In beam search the K hypotheses of a sentence (rows sentence-major) share its source, so they
        attend as K*T queries of one row instead of K copies of the source's keys and values.
        """
        sources = cross_kv[0].shape[0]
        if packing is not None or x.shape[0] == sources:
            return self.cross_attn(x, *cross_kv, mask=src_mask, packing=packing)
        rows, length, d_model = x.shape
        grouped = x.reshape(sources, rows // sources * length, d_model)
        return self.cross_attn(grouped, *cross_kv, mask=src_mask).reshape(rows, length, d_model)


def final_norm(config: ModelConfig) -> nn.Module:
    """The layer norm after the last layer: pre-norm layers leave their output unnormalised."""
    return nn.LayerNorm(config.d_model) if config.norm == "pre" else nn.Identity()


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.final_norm = final_norm(config)
        # Parameter-free, so the standard model's names are unchanged; None when there is no Q_cross.
        self.structured_dropout = (StructuredDropout(config.training_alphas, config.evaluation_alphas)
                                   if config.attention == "xlquery" else None)

    def forward(self, x: Tensor, src_mask: Tensor, segments: Tensor | None = None,
                packing: Packing | None = None) -> Tensor:
        """x [B, S, D] (or packed [N, D] with its `packing`), src_mask [B, 1, 1, S], segment ids [B, S]
        or None -> the shape of x.

        An xlquery encoder given a code-switched batch draws its masks once for all layers (training
        alphas in training mode, evaluation alphas in eval mode); otherwise attention is plain.
        """
        masks = None
        if self.structured_dropout is not None and segments is not None and is_code_switched(segments):
            masks = self.structured_dropout(segments)
        for layer in self.layers:
            x = layer(x, src_mask, masks, packing)
        return self.final_norm(x)


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        self.final_norm = final_norm(config)


@dataclass
class DecoderState:
    """What incremental decoding keeps between steps: B sources, and R = B*K hypotheses (K per source)."""

    src_mask: Tensor  # [B, 1, 1, S]
    cross_kv: list[tuple[Tensor, Tensor]]  # per layer, computed once per source: [B, H, S, Dh] each
    self_kv: list[tuple[Tensor, Tensor] | None]  # per layer, [R, H, t, Dh], grows by one position a step
    length: int = 0  # positions decoded so far

    def select(self, rows: Tensor, sources: Tensor | None = None) -> DecoderState:
        """Keep (and repeat) hypotheses `rows` [R'], e.g. to follow the best beams.

        `sources` [B'] keeps only those sources' cross-attention keys/values (sentences that are done
        leave the batch); the hypotheses in `rows` must then belong to them, sentence-major.
        """

        def pick(kv: tuple[Tensor, Tensor] | None, index: Tensor) -> tuple[Tensor, Tensor] | None:
            return None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))

        src_mask, cross_kv = self.src_mask, self.cross_kv
        if sources is not None:
            src_mask, cross_kv = src_mask.index_select(0, sources), [pick(kv, sources) for kv in cross_kv]
        return DecoderState(src_mask, cross_kv, [pick(kv, rows) for kv in self.self_kv], self.length)


class Transformer(nn.Module):
    """Encoder-decoder translation model; see the module docstring for parameter names."""

    packed_output: Tensor | None = None  # the output projection's weight, prepacked while decoding

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.src_embed = Embedding(config.src_vocab_size, config)
        self.tgt_embed = Embedding(config.tgt_vocab_size, config, output=True)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """fairseq's initialisation: normal(0, D^-0.5) embeddings with a zero pad row, xavier linears."""
        for module in self.modules():
            if isinstance(module, Embedding):
                initialise_embedding_group(module)
            elif isinstance(module, MultiHeadAttention | FeedForward):
                initialise_linears(module)
                if isinstance(module, CrossLingualSelfAttention):
                    module.init_cross_from_query()

    def set_dropout(self, **rates: float) -> None:
        """Change `dropout`, `attention_dropout` or `activation_dropout` in place (shapes untouched): a
        child may train with other rates than its parent had."""
        self.config = dataclasses.replace(self.config, **rates)
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = self.config.dropout
            elif isinstance(module, MultiHeadAttention):
                module.dropout = self.config.attention_dropout
        for module in self.modules():  # the feed-forward's inner dropout has its own rate
            if isinstance(module, FeedForward):
                module.activation_dropout.p = self.config.activation_dropout

    # -- training: whole sequences -------------------------------------------------------------
    def encode(self, src: Tensor, src_segments: Tensor | None = None,
               packing: Packing | None = None) -> tuple[Tensor, Tensor]:
        """src [B, S] -> (memory [B, S, D], src_mask [B, 1, 1, S]); memory is the packed rows [N, D]
        given the `packing` of src.

        `src_segments` [B, S] are the segment ids of code-switched sources (structured_dropout.py),
        -1 exactly at padding; an xlquery encoder uses them, a standard one ignores them.
        When nothing on the source side trains (e.g. `xattn` on a new-target child), the encoder runs
        without building an autograd graph: its activations need no gradient.
        """
        src_mask = (src != PAD_ID)[:, None, None, :]
        if src_segments is not None:
            if src_segments.shape != src.shape:
                raise ValueError(f"src_segments {tuple(src_segments.shape)} must have the shape of src "
                                 f"{tuple(src.shape)}")
            if bool(((src_segments == PADDING) != (src == PAD_ID)).any()):
                raise ValueError(f"src_segments must be {PADDING} exactly where src is padding")
        needs_grad = torch.is_grad_enabled() and any(
            p.requires_grad for p in (*self.src_embed.parameters(), *self.encoder.parameters()))
        with torch.set_grad_enabled(needs_grad):
            memory = self.encoder(self.src_embed(src, packing=packing), src_mask, src_segments, packing)
        return memory, src_mask

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor, src_packing: Packing,
               tgt_packing: Packing) -> Tensor:
        """Teacher forcing on packed batches: tgt_in [B, T] (BOS + target) and the packed source rows
        `memory` [N_src, D] -> the packed target rows' hidden states [N_tgt, D]."""
        x = self.tgt_embed(tgt_in, packing=tgt_packing)
        for layer in self.decoder.layers:
            cross_kv = layer.cross_attn.project_keys_values(memory, src_packing)
            x, _ = layer(x, cross_kv, src_mask, packing=tgt_packing)
        return self.decoder.final_norm(x)

    def output_logits(self, hidden: Tensor) -> Tensor:
        """[..., D] -> [..., V]: the tied output projection (no bias as in fairseq, unless `logits_bias`)."""
        return packed_linear(hidden, self.packed_output, self.tgt_embed.tokens.weight, self.tgt_embed.logits_bias)

    @contextlib.contextmanager
    def prepacked(self) -> Iterator[None]:
        """Decode on weights prepacked for oneDNN (`prepacked.py`: faster for a decoding step's few rows
        on a CPU; nothing changes elsewhere). For inference only: the packed copies have no autograd
        and do not follow updates, so they exist only inside the context."""
        linears = [module for module in self.modules() if isinstance(module, Linear)]
        try:
            for linear in linears:
                linear.packed = pack(linear.weight)
            self.packed_output = pack(self.tgt_embed.tokens.weight)
            yield
        finally:
            for linear in linears:
                linear.packed = None
            self.packed_output = None

    def forward(self, src: Tensor, tgt_in: Tensor, keep: Tensor | None = None,
                src_segments: Tensor | None = None, targets: Tensor | None = None,
                label_smoothing: float = 0.0) -> Tensor:
        """src [B, S], tgt_in [B, T] -> logits [B, T, V]; or, given `targets`, the training loss.

        With `keep` [B, T] (True at positions to predict, all real positions of tgt_in), only those
        rows are projected onto the vocabulary: logits [K, V] for the K kept positions, row-major.
        Padding costs no matrix product either way (the batch runs packed); without `keep` the
        padding positions' logits are those of a zero hidden state.
        `targets` [K] (the next tokens at the kept positions, `keep` required): the summed
        cross-entropy with `label_smoothing` instead of logits, computed without the [K, V] logits
        on a CPU (`loss.py`). `src_segments` [B, S]: segment ids of code-switched sources (`encode`).
        """
        src_packing, tgt_packing = Packing.of(src), Packing.of(tgt_in)
        memory, src_mask = self.encode(src, src_segments, src_packing)
        hidden = self.decode(tgt_in, memory, src_mask, src_packing, tgt_packing)  # [N_tgt, D]
        if keep is None:
            if targets is not None:
                raise ValueError("targets need keep: the positions they are the next tokens of")
            return self.output_logits(tgt_packing.pad(hidden))
        chosen = tgt_packing.select(keep)
        kept = hidden if chosen is None else hidden[chosen]
        if targets is None:
            return self.output_logits(kept)
        return output_loss(kept, self.tgt_embed.tokens.weight, self.tgt_embed.logits_bias, targets, label_smoothing)

    # -- inference: one target position at a time ---------------------------------------------
    def start_decoding(self, src: Tensor, src_segments: Tensor | None = None) -> DecoderState:
        """Encode src [B, S] (with its segment ids [B, S], if code-switched) and compute every layer's
        cross-attention keys/values once."""
        packing = Packing.of(src)
        memory, src_mask = self.encode(src, src_segments, packing)
        cross_kv = [layer.cross_attn.project_keys_values(memory, packing) for layer in self.decoder.layers]
        return DecoderState(src_mask, cross_kv, [None] * len(self.decoder.layers))

    def decode_step(self, tokens: Tensor, state: DecoderState) -> Tensor:
        """Feed the newest tokens [B] and return next-token log-probabilities [B, V]; updates `state`."""
        x = self.tgt_embed(tokens[:, None], start=state.length)
        for i, layer in enumerate(self.decoder.layers):
            x, state.self_kv[i] = layer(x, state.cross_kv[i], state.src_mask, past_kv=state.self_kv[i])
        state.length += 1
        return F.log_softmax(self.output_logits(self.decoder.final_norm(x[:, 0])).float(), dim=-1)


def initialise_embedding_group(embedding: Embedding) -> None:
    """Fresh embeddings: tokens and learned positions normal(0, D^-0.5), pad row zero; layer norm
    identity; logits bias zero."""
    d_model = embedding.tokens.embedding_dim
    with torch.no_grad():
        nn.init.normal_(embedding.tokens.weight, mean=0.0, std=d_model ** -0.5)
        embedding.tokens.weight[PAD_ID].zero_()
        if isinstance(embedding.positions, nn.Embedding):
            nn.init.normal_(embedding.positions.weight, mean=0.0, std=d_model ** -0.5)
        if isinstance(embedding.norm, nn.LayerNorm):
            embedding.norm.reset_parameters()
        if embedding.logits_bias is not None:
            embedding.logits_bias.zero_()


def initialise_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every linear layer inside `module`."""
    for linear in module.modules():
        if isinstance(linear, nn.Linear):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)


def config_differences(expected: ModelConfig, actual: ModelConfig) -> list[str]:
    """Human-readable `field: expected X, found Y` for every field where two configs differ."""
    return [f"{f.name}: expected {getattr(expected, f.name)}, found {getattr(actual, f.name)}"
            for f in dataclasses.fields(ModelConfig) if getattr(expected, f.name) != getattr(actual, f.name)]
