"""Translation by greedy and beam search over the model's key/value cache.

Beam search keeps, for every source sentence, the `beam` best partial translations (hypotheses)
by the sum of their tokens' log-probabilities, extends each by every vocabulary token at each step,
and keeps the `beam` best extensions. A hypothesis that emits EOS is finished and set aside, scored
`sum of log-probs / length ** length_penalty` (length counting the EOS): the plain sum favours short
translations, and a penalty above 1 rewards length a little more than averaging would. As in fairseq,
which Gheini et al. (2021) used with beam 5 and length penalty 1.2, a sentence stops as soon as it has
`beam` finished hypotheses, or at its maximum length, where every live hypothesis must emit EOS.

A code-switched source (`data/codeswitch.py`) comes with its segment ids, which the search passes to
the encoder once; decoding is the same for it, since the cross-lingual query lives in the encoder.

Shapes: B sentences, S source length, K beam size, V target vocabulary size.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from xattn_ray.engine.model import DecoderState, Transformer
from xattn_ray.engine.structured_dropout import PADDING
from xattn_ray.engine.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer


def greedy_search(model: Transformer, src: Tensor, max_len_a: float = 1.2, max_len_b: int = 10,
                  src_segments: Tensor | None = None) -> list[list[int]]:
    """The most probable next token at every step, for each sentence of src [B, S].

    src holds source ids followed by EOS, right-padded with PAD; `src_segments` [B, S] are the segment
    ids of code-switched sources. Returns, per sentence, the output ids without BOS and EOS; a sentence
    leaves the batch as soon as it emits EOS.
    """
    with _inference(model):
        max_lens = max_output_lengths(model, src, max_len_a, max_len_b)  # [B]
        state = _start_decoding(model, src, src_segments)
        sentences = torch.arange(src.shape[0], device=src.device)  # original index of each batch row
        tokens = torch.full_like(sentences, BOS_ID)  # [B'] the newest token of each row
        outputs: list[list[int]] = [[] for _ in range(src.shape[0])]
        for step in itertools.count():
            log_probs = _next_token_log_probs(model, tokens, state, at_limit=max_lens == step)
            tokens = log_probs.argmax(dim=-1)
            for sentence, token in zip(sentences.tolist(), tokens.tolist()):
                if token != EOS_ID:
                    outputs[sentence].append(token)
            alive = (tokens != EOS_ID).nonzero().squeeze(1)
            if len(alive) == 0:
                break
            if len(alive) < len(tokens):
                state, sentences, tokens, max_lens = (state.select(alive, alive), sentences[alive],
                                                      tokens[alive], max_lens[alive])
        return outputs


def beam_search(model: Transformer, src: Tensor, beam: int = 5, length_penalty: float = 1.2,
                max_len_a: float = 1.2, max_len_b: int = 10,
                src_segments: Tensor | None = None) -> list[list[int]]:
    """The best finished hypothesis of a beam search (module docstring) for each sentence of src [B, S].

    src holds source ids followed by EOS, right-padded with PAD; `src_segments` [B, S] are the segment
    ids of code-switched sources. Returns, per sentence, the output ids without BOS and EOS. All
    sentences' hypotheses form one batch of B*K rows (sentence-major), from which finished sentences
    are dropped so the work shrinks as sentences finish.

    UNK may be emitted, as in fairseq; PAD and BOS never are. An empty output is allowed (fairseq's
    `--min-len 1` forbids it). Stopping at K finished hypotheses is fast but not exhaustive: on some
    sentences the result scores below greedy search's, since all K may be shorter than a better
    hypothesis still growing (and a pruned prefix can hide the best one).
    """
    if beam < 1:
        raise ValueError(f"beam must be at least 1, got {beam}")
    with _inference(model):
        batch_size = src.shape[0]
        max_lens = max_output_lengths(model, src, max_len_a, max_len_b)  # [B'] of the active sentences
        # The K hypotheses of a sentence share its cross-attention keys/values (DecoderLayer.cross_attend).
        state = _start_decoding(model, src, src_segments)
        sentences = torch.arange(batch_size, device=src.device)  # [B'] original index of active sentences
        # All beams of a sentence start identical, so only the first is live; the others start at -inf
        # and so cannot be chosen until real candidates run out.
        scores = torch.full((batch_size, beam), float("-inf"), device=src.device)
        scores[:, 0] = 0.0
        scores = scores.view(-1)  # [B'*K] sum of log-probs of each live hypothesis
        hypotheses = torch.full((batch_size * beam, 1), BOS_ID, device=src.device)  # [B'*K, 1 + step]
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch_size)]  # (score, ids)
        for step in itertools.count():
            active = len(sentences)
            # 1. Extend every live hypothesis by every token: [B', K*V] candidate scores.
            at_limit = (max_lens == step).repeat_interleave(beam)
            if step == 0:  # a sentence's K hypotheses are all BOS yet: decode one per sentence, then copy
                first = _next_token_log_probs(model, hypotheses[::beam, -1], state, at_limit[::beam])
                log_probs = first.repeat_interleave(beam, dim=0)
                state = state.select(torch.arange(batch_size, device=src.device).repeat_interleave(beam))
            else:
                log_probs = _next_token_log_probs(model, hypotheses[:, -1], state, at_limit)
            # A sentence's best 2K candidates are among its beams' own best 2K tokens (a beam's score
            # shifts all its candidates alike), so only those [B'*K, 2K] are scored, not all K*V.
            per_beam = min(2 * beam, log_probs.shape[-1])
            beam_scores, beam_tokens = log_probs.topk(per_beam, dim=1)
            candidates = (scores[:, None] + beam_scores).view(active, beam * per_beam)
            # 2. The best 2K candidates: at most K of them end in EOS (one per beam), so at least K go on.
            top_scores, top_indices = candidates.topk(min(2 * beam, beam * per_beam), dim=1)
            top_beams = top_indices // per_beam  # [B', 2K]
            top_tokens = beam_tokens.view(active, beam * per_beam).gather(1, top_indices)
            top_rows = torch.arange(active, device=src.device)[:, None] * beam + top_beams
            # 3. Set aside the EOS candidates among the best K, best first, until a sentence has K
            #    (beams not yet started sit at -inf and end nothing).
            ends = (top_tokens[:, :beam] == EOS_ID) & top_scores[:, :beam].isfinite()
            sentence_ids = sentences.tolist()
            for position, rank in ends.nonzero().tolist():
                sentence_finished = finished[sentence_ids[position]]
                if len(sentence_finished) < beam:
                    score = top_scores[position, rank].item() / (step + 1) ** length_penalty
                    output = hypotheses[top_rows[position, rank], 1:].tolist()
                    sentence_finished.append((score, output))
            # 4. A sentence is done with K finished hypotheses or at its maximum length.
            full = torch.tensor([len(finished[sentence]) == beam for sentence in sentence_ids],
                                device=src.device)
            keep = (~full & (max_lens != step)).nonzero().squeeze(1)  # [B''] sentences going on
            if len(keep) == 0:
                break
            # 5. Each remaining sentence goes on with its best K candidates that do not end in EOS
            #    (a stable sort puts them first, still best first).
            go_on = torch.sort((top_tokens[keep] == EOS_ID).int(), dim=1, stable=True).indices[:, :beam]
            rows = top_rows[keep].gather(1, go_on).view(-1)  # [B''*K] rows of the hypotheses extended
            new_tokens = top_tokens[keep].gather(1, go_on).view(-1, 1)
            scores = top_scores[keep].gather(1, go_on).view(-1)
            # 6. One selection both follows the chosen beams and drops the finished sentences.
            hypotheses = torch.cat([hypotheses[rows], new_tokens], dim=1)
            state = state.select(rows, keep if len(keep) < active else None)
            sentences, max_lens = sentences[keep], max_lens[keep]
        return [max(sentence_finished, key=lambda scored: scored[0])[1] for sentence_finished in finished]


def translate(model: Transformer, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer, lines: Sequence[str],
              beam: int = 5, length_penalty: float = 1.2, max_tokens: int = 4096, max_len_a: float = 1.2,
              max_len_b: int = 10) -> list[str]:
    """Translate `lines` (raw text) into detokenised target text, in the order given.

    Sources longer than the model's positions are truncated; then as `translate_ids`.
    """
    sources = [ids[:model.config.max_positions - 1] + [EOS_ID] for ids in src_tokenizer.encode(lines)]
    return translate_ids(model, tgt_tokenizer, sources, None, beam, length_penalty, max_tokens, max_len_a,
                         max_len_b)


def translate_ids(model: Transformer, tgt_tokenizer: Tokenizer, sources: Sequence[list[int]],
                  segments: Sequence[list[int]] | None = None, beam: int = 5, length_penalty: float = 1.2,
                  max_tokens: int = 4096, max_len_a: float = 1.2, max_len_b: int = 10) -> list[str]:
    """Translate encoded `sources` (ids ending with EOS, e.g. `encode_codeswitched`'s, with their
    `segments` ids when code-switched) into detokenised target text, in the order given.

    Sentences are sorted by length and batched so that a batch holds at most `max_tokens` source
    tokens with padding (a longer sentence goes alone), which keeps padding and wasted steps small.
    `beam` 1 is greedy search; outputs are at most `max_len_a * source length + max_len_b` tokens
    long (`max_output_lengths`).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if not math.isfinite(length_penalty):  # a NaN score would rank hypotheses arbitrarily
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty}")
    device = next(model.parameters()).device
    outputs: list[list[int]] = [[] for _ in sources]
    for batch in _length_sorted_batches([len(source) for source in sources], max_tokens):
        src = _padded([sources[index] for index in batch], PAD_ID, device)
        src_segments = None if segments is None else _padded([segments[index] for index in batch], PADDING, device)
        if beam == 1:
            translations = greedy_search(model, src, max_len_a, max_len_b, src_segments)
        else:
            translations = beam_search(model, src, beam, length_penalty, max_len_a, max_len_b, src_segments)
        for index, output in zip(batch, translations):
            outputs[index] = output
    return tgt_tokenizer.decode(outputs)


def _padded(rows: Sequence[list[int]], fill: int, device: torch.device) -> Tensor:
    """Right-pad `rows` with `fill` into a [len(rows), longest] tensor on `device`."""
    padded = torch.full((len(rows), max(len(row) for row in rows)), fill, device=device)
    for index, row in enumerate(rows):
        padded[index, :len(row)] = torch.tensor(row)
    return padded


def _length_sorted_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices into `lengths`, shortest first, cut into batches of at most `max_tokens` padded tokens.

    A batch's padded size is its size times its longest (last) length; a sentence longer than
    `max_tokens` forms a batch of its own.
    """
    batches: list[list[int]] = []
    batch: list[int] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        if batch and (len(batch) + 1) * lengths[index] > max_tokens:
            batches.append(batch)
            batch = []
        batch.append(index)
    return batches + [batch] if batch else batches


def _start_decoding(model: Transformer, src: Tensor, src_segments: Tensor | None) -> DecoderState:
    """model.start_decoding, passing segment ids only when there are some (so any model with the
    one-argument `start_decoding` can be searched over plain sources)."""
    return model.start_decoding(src) if src_segments is None else model.start_decoding(src, src_segments)


def _next_token_log_probs(model: Transformer, tokens: Tensor, state: DecoderState,
                          at_limit: Tensor) -> Tensor:
    """Feed tokens [N] and return next-token log-probs [N, V] that the search may choose from.

    PAD and BOS are never output; rows at their maximum length (at_limit [N], bool) can only end.
    """
    log_probs = model.decode_step(tokens, state)
    log_probs[:, [PAD_ID, BOS_ID]] = float("-inf")
    if bool(at_limit.any()):
        log_probs[at_limit, :EOS_ID] = float("-inf")
        log_probs[at_limit, EOS_ID + 1:] = float("-inf")
    return log_probs


def max_output_lengths(model: Transformer, src: Tensor, max_len_a: float, max_len_b: int) -> Tensor:
    """The most tokens (EOS not counted) each sentence of src [B, S] may output: [B] int64.

    `int(max_len_a * source length + max_len_b)`, the source length counting neither EOS nor PAD (nor
    the BOS that starts a code-switched source), and at most max_positions - 1: BOS and that many
    tokens fill the decoder's positions, since the final EOS is predicted but never fed back.
    """
    source_lengths = ((src != PAD_ID) & (src != EOS_ID) & (src != BOS_ID)).sum(dim=1).tolist()
    lengths = [int(max_len_a * length + max_len_b) for length in source_lengths]  # in Python's float64
    return torch.tensor(lengths, device=src.device).clamp(0, model.config.max_positions - 1)


@contextlib.contextmanager
def _inference(model: Transformer) -> Iterator[None]:
    """Evaluation mode (no dropout) without autograd, on prepacked weights where that is faster
    (`Transformer.prepacked`); the model's training mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        # Any model with `start_decoding` and `decode_step` can be searched (the tests' table models).
        prepacked = model.prepacked() if isinstance(model, Transformer) else contextlib.nullcontext()
        with torch.inference_mode(), prepacked:
            yield
    finally:
        model.train(was_training)
