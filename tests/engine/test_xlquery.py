"""The cross-lingual query (xlquery): structured masks, the joint softmax, its fallbacks, the model around it."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from xattn_ray.engine.attention import CrossLingualSelfAttention, MultiHeadAttention
from xattn_ray.engine.batching import collate
from xattn_ray.engine.checkpoint import load_model, save_model
from xattn_ray.data.codeswitch import CodeSwitchedPair, encode_codeswitched
from xattn_ray.engine.decode import beam_search, greedy_search, translate_ids
from xattn_ray.engine.model import Transformer, preset_config
from xattn_ray.engine.policies import POLICIES, Policy, PolicyError, group_sizes, trainable_names
from xattn_ray.schema import Invalid
from xattn_ray.engine.structured_dropout import (EVALUATION_ALPHAS, TRAINING_ALPHAS, MaskAlphas, StructuredDropout,
                                          sample_masks)
from xattn_ray.engine.tokenizer import PAD_ID
from xattn_ray.engine.transfer import make_child, to_xlquery

SNAPSHOT = Path(__file__).parent / "snapshots" / "tiny_parameter_names.txt"
ALL_ONES = MaskAlphas(mono=1.0, cross=1.0)

# A hand-made batch: first token, segment one (positions 1-3), segment two (4-5), padding (6); and a
# monolingual example (no segment 2) with more padding.
SEGMENTS = torch.tensor([[0, 1, 1, 1, 2, 2, -1],
                         [0, 1, 1, 1, -1, -1, -1]])


def block_masks() -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation pattern of the first example, written out by hand: M1 within segments, M2 across
    them, both with the first token's row and column; padding keys (column 6) never. The padding query
    (row 6) is in no segment: whatever it sees is discarded, but it sees the first token, so no row is empty."""
    m1 = torch.tensor([[1, 1, 1, 1, 1, 1, 0],
                       [1, 1, 1, 1, 0, 0, 0],
                       [1, 1, 1, 1, 0, 0, 0],
                       [1, 1, 1, 1, 0, 0, 0],
                       [1, 0, 0, 0, 1, 1, 0],
                       [1, 0, 0, 0, 1, 1, 0],
                       [1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    m2 = torch.tensor([[1, 1, 1, 1, 1, 1, 0],
                       [1, 0, 0, 0, 1, 1, 0],
                       [1, 0, 0, 0, 1, 1, 0],
                       [1, 0, 0, 0, 1, 1, 0],
                       [1, 1, 1, 1, 0, 0, 0],
                       [1, 1, 1, 1, 0, 0, 0],
                       [1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    return m1, m2


# --- structured masks ---------------------------------------------------------------------------

def test_evaluation_alphas_give_the_exact_block_pattern():
    m1, m2 = sample_masks(SEGMENTS, EVALUATION_ALPHAS)
    assert m1.shape == m2.shape == (2, 1, 7, 7)
    expected_m1, expected_m2 = block_masks()
    assert torch.equal(m1[0, 0], expected_m1) and torch.equal(m2[0, 0], expected_m2)


def test_a_monolingual_example_gets_every_key_in_m1_and_nothing_in_m2():
    m1, m2 = sample_masks(SEGMENTS, TRAINING_ALPHAS, torch.Generator().manual_seed(0))
    real_keys = (SEGMENTS[1] >= 0).expand(7, 7)
    assert torch.equal(m1[1, 0], real_keys)
    assert not m2[1].any()


def long_example() -> torch.Tensor:
    """The first token, 12 tokens of segment one, 10 of segment two, 3 of padding: [1, 26]."""
    return torch.tensor([[0] + [1] * 12 + [2] * 10 + [-1] * 3])


def test_training_masks_keep_what_they_must_and_drop_some_of_the_rest():
    segments = long_example()
    m1, m2 = (mask[0, 0] for mask in sample_masks(segments, TRAINING_ALPHAS, torch.Generator().manual_seed(1)))
    query, key = segments[0, :, None], segments[0, None, :]
    real_query, real_key = (query >= 0) & (key >= 0), key >= 0
    within = (query == key) & (query > 0) & real_query
    cross = (query != key) & (query > 0) & (key > 0) & real_query
    assert m1[within].all() and m2[cross].all()  # each mask's own entries are all kept
    for mask in (m1, m2):
        assert mask[0, real_key[0]].all() and mask[:, 0].all()  # the first token's row and column
        assert not mask[:, ~real_key[0]].any()  # padding keys never
    for dropped in (m1[cross], m2[within]):  # the other entries: kept with probability 0.3
        assert 0.15 < dropped.float().mean() < 0.45


def test_masks_are_resampled_on_every_call_and_reproducible_from_a_generator():
    dropout = StructuredDropout().train()
    segments = long_example()
    first, second = dropout(segments), dropout(segments)
    assert not torch.equal(first[0], second[0]) and not torch.equal(first[1], second[1])
    again = [dropout(segments, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*again))
    evaluation = dropout.eval()(segments)  # eval mode: the evaluation alphas, no randomness
    assert all(torch.equal(a, b) for a, b in zip(evaluation, sample_masks(segments, EVALUATION_ALPHAS)))


def test_alphas_must_be_probabilities():
    with pytest.raises(Invalid, match=r"keeping probability must be in \[0, 1\], got 1.5"):
        MaskAlphas(mono=1.5, cross=0.3)
    with pytest.raises(Invalid, match="got -0.1"):
        Transformer(preset_config("tiny", 10, 12, attention="xlquery", eval_cross_alpha=-0.1))
    with pytest.raises(Invalid, match="must be 'standard' or 'xlquery', got 'cross'") as info:
        preset_config("tiny", 10, 12, attention="cross")
    assert info.value.key == "attention"  # an experiment file's error names `model.attention`


# --- the joint softmax --------------------------------------------------------------------------

def attention_pair(seed: int = 0) -> tuple[MultiHeadAttention, CrossLingualSelfAttention]:
    """A plain attention and an xlquery attention with the same weights (Q_cross = Q), in eval mode."""
    torch.manual_seed(seed)
    plain = MultiHeadAttention(16, 2, dropout=0.1).eval()
    crossed = CrossLingualSelfAttention(16, 2, dropout=0.1).eval()
    crossed.load_state_dict({**plain.state_dict(), "q_cross_proj.weight": plain.q_proj.weight,
                             "q_cross_proj.bias": plain.q_proj.bias})
    return plain, crossed


def test_joint_softmax_with_equal_queries_and_all_ones_masks_is_plain_attention():
    """exp(S - m) + exp(S_x - m) = 2 exp(S - m) when Q_cross = Q: the factor cancels in the softmax."""
    plain, crossed = attention_pair()
    x = torch.randn(2, 7, 16)
    masks = sample_masks(SEGMENTS, ALL_ONES)
    padding = (SEGMENTS >= 0)[:, None, None, :]
    expected = plain(x, *plain.project_keys_values(x), mask=padding)
    joint = crossed(x, *crossed.project_keys_values(x), structured_masks=masks)
    assert torch.allclose(joint, expected, atol=1e-6, rtol=1e-5)


def test_joint_softmax_uses_both_queries_where_their_masks_allow():
    """The joint softmax written out for one row: one normalisation over both score sets."""
    plain, crossed = attention_pair()
    with torch.no_grad():
        crossed.q_cross_proj.weight.normal_()  # make the two queries differ
    x = torch.randn(2, 7, 16)
    m1, m2 = sample_masks(SEGMENTS, EVALUATION_ALPHAS)
    keys, values = crossed.project_keys_values(x)
    out = crossed(x, keys, values, structured_masks=(m1, m2))
    q, qx = crossed.split_heads(crossed.q_proj(x)), crossed.split_heads(crossed.q_cross_proj(x))
    s, sx = q @ keys.transpose(-2, -1) / 2 ** 1.5, qx @ keys.transpose(-2, -1) / 2 ** 1.5  # Dh = 8
    weights = s.exp() * m1 + sx.exp() * m2
    expected = crossed.out_proj(crossed.merge_heads((weights / weights.sum(-1, keepdim=True)) @ values))
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5)


def test_without_masks_the_variant_is_exactly_standard_attention():
    plain, crossed = attention_pair()
    with torch.no_grad():
        crossed.q_cross_proj.weight.normal_()  # unused on monolingual input
    x = torch.randn(2, 7, 16)
    padding = (SEGMENTS >= 0)[:, None, None, :]
    assert torch.equal(crossed(x, *crossed.project_keys_values(x), mask=padding),
                       plain(x, *plain.project_keys_values(x), mask=padding))


# --- the model ----------------------------------------------------------------------------------

def standard_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset_config("tiny", 10, 12, **overrides)).eval()


def batch_with_segments() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """src [2, 7] whose padding follows SEGMENTS, tgt_in [2, 5], and SEGMENTS."""
    generator = torch.Generator().manual_seed(3)
    src = torch.randint(4, 10, (2, 7), generator=generator).masked_fill(SEGMENTS < 0, PAD_ID)
    src[:, 0] = 1  # BOS, the language-neutral first token
    tgt = torch.randint(4, 12, (2, 5), generator=generator)
    tgt[:, 0] = 1
    return src, tgt, SEGMENTS


def test_standard_snapshot_is_unchanged_and_xlquery_only_adds_q_cross():
    snapshot = SNAPSHOT.read_text().splitlines()
    standard = [f"{name} {tuple(p.shape)}" for name, p in standard_model().named_parameters()]
    assert standard == snapshot
    xlquery = [f"{name} {tuple(p.shape)}" for name, p in standard_model(attention="xlquery").named_parameters()]
    added = [line for line in xlquery if ".q_cross_proj." in line]
    assert [line for line in xlquery if line not in added] == snapshot
    assert added == [f"encoder.layers.{n}.self_attn.q_cross_proj.{kind}" for n in range(2)
                     for kind in ("weight (32, 32)", "bias (32,)")]


def test_a_fresh_xlquery_model_starts_with_q_cross_equal_to_q():
    model = standard_model(attention="xlquery")
    for layer in model.encoder.layers:
        assert torch.equal(layer.self_attn.q_cross_proj.weight, layer.self_attn.q_proj.weight)


def test_a_converted_model_on_one_segment_input_gives_identical_outputs():
    standard = standard_model()
    converted = to_xlquery(standard).eval()
    src, tgt, segments = batch_with_segments()
    one_segment = segments.clamp(max=1)  # the same tokens, all in segment one
    reference = standard(src, tgt)
    assert torch.equal(converted(src, tgt), reference)
    assert torch.equal(converted(src, tgt, src_segments=one_segment), reference)
    assert torch.equal(standard(src, tgt, src_segments=segments), reference)  # a standard model ignores them
    named = dict(converted.named_parameters())
    for name, parameter in standard.named_parameters():
        assert torch.equal(named[name], parameter)
    with pytest.raises(ValueError, match="converts a standard model"):
        to_xlquery(converted)


def test_converted_model_with_all_ones_masks_matches_the_standard_model_on_code_switched_input():
    standard = standard_model()
    src, tgt, segments = batch_with_segments()
    all_ones = to_xlquery(standard, evaluation=ALL_ONES).eval()
    torch.testing.assert_close(all_ones(src, tgt, src_segments=segments), standard(src, tgt),
                               atol=1e-5, rtol=1e-5)
    blocked = to_xlquery(standard).eval()  # the evaluation block pattern does change code-switched rows
    assert not torch.allclose(blocked(src, tgt, src_segments=segments)[0], standard(src, tgt)[0], atol=1e-3)


def test_a_monolingual_example_in_a_code_switched_batch_gets_plain_attention():
    standard = standard_model()
    converted = to_xlquery(standard).eval()
    with torch.no_grad():
        for layer in converted.encoder.layers:
            layer.self_attn.q_cross_proj.weight.normal_()  # would show if the monolingual row used it
    src, tgt, segments = batch_with_segments()
    torch.testing.assert_close(converted(src, tgt, src_segments=segments)[1], standard(src, tgt)[1],
                               atol=1e-5, rtol=1e-5)


def test_segments_must_match_the_source():
    model = standard_model(attention="xlquery")
    src, tgt, segments = batch_with_segments()
    with pytest.raises(ValueError, match="must have the shape of src"):
        model(src, tgt, src_segments=segments[:, :5])
    with pytest.raises(ValueError, match="-1 exactly where src is padding"):
        model(src, tgt, src_segments=segments.clamp(min=0))


def test_checkpoint_keeps_the_attention_variant(tmp_path, toy_tokenizers):
    src_tok, tgt_tok = toy_tokenizers
    model = to_xlquery(Transformer(preset_config("tiny", src_tok.vocab_size, tgt_tok.vocab_size)),
                       training=MaskAlphas(mono=0.5, cross=0.2)).eval()
    save_model(tmp_path / "m.pt", model, src_tok, tgt_tok)
    loaded = load_model(tmp_path / "m.pt", expected=model.config).model.eval()
    assert loaded.config.attention == "xlquery" and loaded.config.training_alphas == MaskAlphas(0.5, 0.2)
    src, tgt, segments = batch_with_segments()
    assert torch.equal(loaded(src, tgt, src_segments=segments), model(src, tgt, src_segments=segments))


# --- policies -----------------------------------------------------------------------------------

def test_the_xlquery_group_and_bitfit_select_the_cross_queries():
    parent = to_xlquery(standard_model())
    q_cross = {name for name, _ in parent.named_parameters() if ".q_cross_proj." in name}
    assert len(q_cross) == 4
    only_q_cross = trainable_names(parent, Policy(train=["xlquery"]), None, "pretrain-q-cross")
    assert only_q_cross == q_cross
    bitfit = make_child(parent, "source", 30, POLICIES["bitfit"], "bitfit")
    assert {name for name in q_cross if name.endswith(".bias")} <= bitfit.trainable
    assert not {name for name in q_cross if name.endswith(".weight")} & bitfit.trainable
    assert bitfit.model.config.attention == "xlquery"  # a child keeps its parent's attention
    assert group_sizes(parent)["xlquery"] == 2 * (32 * 32 + 32)
    assert group_sizes(standard_model())["xlquery"] == 0
    with pytest.raises(PolicyError, match="matches no parameter"):
        trainable_names(standard_model(), Policy(train=["xlquery"]), None, "pretrain-q-cross")


# --- training and decoding ----------------------------------------------------------------------

class Words:
    """A stand-in tokenizer: each distinct word gets the next id from 4 (ids 0-3 are special)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def encode(self, lines):
        return [[self.ids.setdefault(word, 4 + len(self.ids)) for word in line.split()] for line in lines]

    def decode(self, ids):
        words = {token: word for word, token in self.ids.items()}
        return [" ".join(words.get(int(token), "?") for token in row) for row in ids]


def test_a_tiny_xlquery_model_trains_on_code_switched_batches_and_beam_search_uses_segments():
    pairs = [CodeSwitchedPair((f"a{i} b{i}", f"c{i} d{i % 3}"), ("fr", "de") if i % 2 else ("fr", "fr"),
                              f"A{i} B{i} C{i}") for i in range(6)]
    src_tok, tgt_tok = Words(), Words()
    encoded = encode_codeswitched(pairs, src_tok, tgt_tok, max_positions=128)
    batch = collate(encoded, range(len(pairs)))
    torch.manual_seed(0)
    model = Transformer(preset_config("tiny", 30, 30, attention="xlquery", dropout=0.0)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    keep = batch.tgt_out != PAD_ID
    losses = []
    for _ in range(40):
        logits = model(batch.src, batch.tgt_in, keep, src_segments=batch.src_segments)
        loss = F.cross_entropy(logits, batch.tgt_out[keep])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert model.encoder.layers[0].self_attn.q_cross_proj.weight.grad.abs().sum() > 0  # Q_cross trains
    outputs = beam_search(model, batch.src, beam=3, src_segments=batch.src_segments)
    assert len(outputs) == len(pairs) and model.training  # search restores training mode
    assert len(greedy_search(model, batch.src, src_segments=batch.src_segments)) == len(pairs)
    texts = translate_ids(model, tgt_tok, encoded.src, encoded.segments, beam=2)
    assert len(texts) == len(pairs) and all(isinstance(text, str) for text in texts)
