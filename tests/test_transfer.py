"""Freeze policies and parent-to-child transfer: what is copied, what is fresh, what trains, what cannot move."""

import pytest
import torch
import torch.nn.functional as F

from xattn_ray.config import LanguagePair
from xattn_ray.model import Transformer, preset_config
from xattn_ray.policies import POLICIES, Policy, PolicyError, count_parameters, group_sizes, trainable_names
from xattn_ray.tokenizer import PAD_ID
from xattn_ray.transfer import TransferError, changed_side, make_child

FR_EN = LanguagePair("fr", "en")


def parent_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset_config("tiny", 20, 24, dropout=0.0, attention_dropout=0.0))


def test_changed_side_detection():
    assert changed_side(FR_EN, LanguagePair("de", "en")) == "source"
    assert changed_side(FR_EN, LanguagePair("fr", "de")) == "target"
    with pytest.raises(TransferError, match="both sides change"):
        changed_side(FR_EN, LanguagePair("de", "cs"))
    with pytest.raises(TransferError, match="no side changes"):
        changed_side(FR_EN, FR_EN)


def groups_of(names):
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("side", ["source", "target"])
def test_each_policy_trains_exactly_its_groups(side):
    parent = parent_model()
    new, old = ("src_embed", "tgt_embed") if side == "source" else ("tgt_embed", "src_embed")
    children = {name: make_child(parent, side, 30, POLICIES[name], name) for name in POLICIES}
    every = {name for name, _ in children["body"].model.named_parameters()}
    new_group = {n for n in every if n.startswith(new)}
    assert children["scratch"].trainable == every
    assert children["body"].trainable == every - {n for n in every if n.startswith(old)}
    assert children["embed"].trainable == new_group
    xattn = {n for n in every if ".cross_attn" in n}
    assert children["xattn"].trainable == children["randxattn"].trainable == new_group | xattn
    biases = {n for n in every if n.endswith(".bias") and not n.startswith(old)}
    assert children["bitfit"].trainable == new_group | biases
    for child in children.values():  # requires_grad follows the policy
        assert {n for n, p in child.model.named_parameters() if p.requires_grad} == child.trainable


def test_child_copies_the_parent_except_the_new_embedding_group():
    parent = parent_model()
    child = make_child(parent, "source", 30, POLICIES["xattn"], "xattn")
    parent_params = dict(parent.named_parameters())
    for name, value in child.model.named_parameters():
        if name.startswith("src_embed"):
            assert name not in child.copied
            if name == "src_embed.tokens.weight":
                assert value.shape == (30, 32)  # the new vocabulary
                assert torch.count_nonzero(value[PAD_ID]) == 0
            elif name == "src_embed.positions.weight":
                assert not torch.equal(value, parent_params[name])  # freshly drawn, not the parent's
        else:
            assert name in child.copied and torch.equal(value, parent_params[name]), name
    assert child.model.config.src_vocab_size == 30 and child.model.config.tgt_vocab_size == 24


def test_randxattn_differs_from_the_parent_exactly_in_the_xattn_group():
    parent = parent_model()
    child = make_child(parent, "target", 30, POLICIES["randxattn"], "randxattn")
    parent_params = dict(parent.named_parameters())
    for name, value in child.model.named_parameters():
        if name.startswith("tgt_embed"):
            continue
        is_xattn = ".cross_attn." in name or ".cross_attn_norm." in name
        if is_xattn and name.endswith("proj.weight"):
            assert not torch.equal(value, parent_params[name]), name
        elif not is_xattn:
            assert torch.equal(value, parent_params[name]), name
        assert (name in child.copied) != is_xattn


def test_scratch_keeps_the_architecture_but_no_weights():
    parent = parent_model()
    child = make_child(parent, "source", 30, POLICIES["scratch"], "scratch")
    assert not child.copied
    assert not torch.equal(child.model.encoder.layers[0].ffn.fc1.weight, parent.encoder.layers[0].ffn.fc1.weight)


def test_frozen_tensors_stay_bitwise_unchanged_and_trainable_ones_move():
    parent = parent_model()
    for policy in ("xattn", "bitfit", "embed", "body"):
        child = make_child(parent, "source", 30, POLICIES[policy], policy)
        model = child.model.train()
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        generator = torch.Generator().manual_seed(1)
        for _ in range(3):
            src = torch.randint(4, 30, (4, 6), generator=generator)
            tgt = torch.randint(4, 24, (4, 5), generator=generator)
            logits = model(src, tgt)
            F.cross_entropy(logits.reshape(-1, 24), tgt.roll(-1, 1).reshape(-1)).backward()
            optimizer.step()
            optimizer.zero_grad()
        for name, p in model.named_parameters():
            moved = not torch.equal(p, before[name])
            assert moved == (name in child.trainable), f"{policy}: {name} moved={moved}"


def test_policy_summary_line_and_group_sizes():
    model = make_child(parent_model(), "source", 30, POLICIES["xattn"], "xattn").model
    counts = count_parameters(model)
    sizes = group_sizes(model)
    assert counts.trainable == sizes["xattn"] + sizes["src"]
    assert counts.summary() == (f"trainable params: {counts.trainable:,} || all params: {counts.total:,} || "
                                f"trainable%: {100 * counts.trainable / counts.total:.4f}")
    assert sizes["body"] + sizes["src"] + sizes["tgt"] == counts.total


def test_a_pattern_matching_nothing_is_an_error():
    model = parent_model()
    with pytest.raises(PolicyError, match=r"policy 'mine': pattern 'decoder.layers.\*.cros_attn.\*'"):
        trainable_names(model, Policy(train=["new_embed", "decoder.layers.*.cros_attn.*"]), "source", "mine")


def test_custom_policy_with_raw_patterns():
    model = parent_model()
    trainable = trainable_names(model, Policy(train=["decoder.layers.*.ffn.*"]), "target", "ffn-only")
    assert trainable and all(".ffn." in name for name in trainable)
