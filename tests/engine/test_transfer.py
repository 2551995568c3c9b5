"""Freeze policies and parent-to-child transfer: what is copied, what is fresh, what trains, what cannot move."""

import pytest
import torch
import torch.nn.functional as F

from xattn_ray.data.options import LanguagePair, changed_side
from xattn_ray.engine.model import Transformer, preset_config
from xattn_ray.engine.policies import POLICIES, Policy, PolicyError, count_parameters, group_sizes, trainable_names
from xattn_ray.engine.tokenizer import PAD_ID
from xattn_ray.engine.transfer import TransferError, make_child
from xattn_ray.errors import XattnError

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
    with pytest.raises(PolicyError, match=r"policy 'mine': pattern 'decoder.layers.\*.cros_attn.\*'") as caught:
        trainable_names(model, Policy(train=["new_embed", "decoder.layers.*.cros_attn.*"]), "source", "mine")
    assert isinstance(caught.value, XattnError)  # the user's typo: one line at the command line, not a traceback


def test_custom_policy_with_raw_patterns():
    model = parent_model()
    trainable = trainable_names(model, Policy(train=["decoder.layers.*.ffn.*"]), "target", "ffn-only")
    assert trainable and all(".ffn." in name for name in trainable)


# --- Grafting embedding groups: forgetting and zero-shot stitching ----------------------------

def languages_of(loaded) -> str:
    return f"{loaded.src_tokenizer.language}-{loaded.tgt_tokenizer.language}"


@pytest.fixture(scope="module")
def tokenizers(toy_tokenizers, tmp_path_factory):
    """Real SentencePiece models: `aa` and `bb` (60 pieces each), `cc` (50) and `dd` (64)."""
    from xattn_ray.engine.tokenizer import TokenizerOptions, train_tokenizer

    cache = tmp_path_factory.mktemp("graft-spm")
    lines = [f"zebra{i % 23} quill{i % 7} oak{i % 3}" for i in range(400)]
    return {"aa": toy_tokenizers[0], "bb": toy_tokenizers[1],
            "cc": train_tokenizer("cc", lines, TokenizerOptions(vocab_size=50), cache),
            "dd": train_tokenizer("dd", [line.title() for line in lines], TokenizerOptions(vocab_size=64), cache)}


def loaded_model(tokenizers, src: str, tgt: str, seed: int, **overrides):
    from xattn_ray.engine.checkpoint import LoadedModel

    torch.manual_seed(seed)
    config = preset_config("tiny", tokenizers[src].vocab_size, tokenizers[tgt].vocab_size, dropout=0.0,
                           attention_dropout=0.0, **overrides)
    return LoadedModel(Transformer(config), tokenizers[src], tokenizers[tgt], extra={})


def child_of(parent, side: str, new):
    """The `xattn` child of `parent` whose `side` speaks `new`'s language, as `make_child` leaves it."""
    from xattn_ray.engine.checkpoint import LoadedModel

    model = make_child(parent.model, side, new.vocab_size, POLICIES["xattn"], "xattn").model
    if side == "source":
        return LoadedModel(model, new, parent.tgt_tokenizer, extra={})
    return LoadedModel(model, parent.src_tokenizer, new, extra={})


@pytest.mark.parametrize("side", ["source", "target"])
def test_graft_is_the_base_except_the_donors_embedding_group(tokenizers, side):
    from xattn_ray.engine.transfer import graft_embeddings

    base = loaded_model(tokenizers, "aa", "bb", seed=1)
    donor = loaded_model(tokenizers, *(("cc", "bb") if side == "source" else ("aa", "cc")), seed=2)
    base_before = {name: value.clone() for name, value in base.model.state_dict().items()}
    grafted = graft_embeddings(base, donor, side)
    prefix = "src_embed." if side == "source" else "tgt_embed."
    base_state, donor_state = base.model.state_dict(), donor.model.state_dict()
    for name, value in grafted.model.state_dict().items():
        expected = donor_state[name] if name.startswith(prefix) else base_state[name]
        assert torch.equal(value, expected), name
    assert all(torch.equal(base_before[name], value) for name, value in base_state.items())  # base untouched
    assert languages_of(grafted) == ("cc-bb" if side == "source" else "aa-cc")
    vocab = grafted.model.config.src_vocab_size if side == "source" else grafted.model.config.tgt_vocab_size
    assert vocab == tokenizers["cc"].vocab_size == 50
    hidden = torch.randn(3, 32)  # the tied output layer is the donor's on the target side only
    logits = grafted.model.output_logits(hidden)
    owner = donor if side == "target" else base
    assert torch.equal(logits, F.linear(hidden, owner.model.tgt_embed.tokens.weight))
    inputs = {p.data_ptr() for loaded in (base, donor) for p in loaded.model.parameters()}
    assert inputs.isdisjoint(p.data_ptr() for p in grafted.model.parameters())  # copies, not shared tensors


@pytest.mark.parametrize("field, value", [("d_model", 64), ("max_positions", 64), ("heads", 4),
                                          ("encoder_layers", 3), ("decoder_layers", 1), ("ffn_dim", 128)])
def test_graft_onto_another_architecture_names_the_field(tokenizers, field, value):
    from xattn_ray.engine.transfer import graft_embeddings

    base = loaded_model(tokenizers, "aa", "bb", seed=1)
    donor = loaded_model(tokenizers, "cc", "bb", seed=2, **{field: value})
    with pytest.raises(TransferError) as caught:
        graft_embeddings(base, donor, "source")
    message = str(caught.value)
    assert isinstance(caught.value, XattnError) and isinstance(caught.value, ValueError)
    assert "\n" not in message and f"{field} (base {getattr(base.model.config, field)}, donor {value})" in message


@pytest.mark.parametrize("side", ["source", "target"])
def test_plugging_the_parents_embeddings_back_into_an_untrained_child_reproduces_the_parent(tokenizers, side):
    from xattn_ray.engine.transfer import graft_embeddings

    parent = loaded_model(tokenizers, "aa", "bb", seed=1)
    child = child_of(parent, side, tokenizers["cc"])
    plugged = graft_embeddings(child, parent, side)  # the forgetting measurement, before any training
    assert languages_of(plugged) == "aa-bb"
    generator = torch.Generator().manual_seed(3)
    src, tgt = torch.randint(4, 60, (4, 7), generator=generator), torch.randint(4, 60, (4, 5), generator=generator)
    parent.model.eval(), plugged.model.eval()
    with torch.no_grad():
        assert torch.equal(plugged.model(src, tgt), parent.model(src, tgt))


def test_stitch_command_makes_a_zero_shot_pair_and_round_trips(tokenizers, tmp_path):
    """The paper's De-Es example in miniature: the body of an aa-cc child (new target) with the source
    embeddings of a dd-bb child (new source) of the same aa-bb parent is a dd-cc model."""
    import subprocess
    import sys

    from xattn_ray.engine.checkpoint import load_model, save_model
    from xattn_ray.engine.transfer import graft_embeddings

    parent = loaded_model(tokenizers, "aa", "bb", seed=1)
    new_target, new_source = child_of(parent, "target", tokenizers["cc"]), child_of(parent, "source", tokenizers["dd"])
    save_model(tmp_path / "aa-cc.pt", new_target.model, new_target.src_tokenizer, new_target.tgt_tokenizer)
    save_model(tmp_path / "dd-bb.pt", new_source.model, new_source.src_tokenizer, new_source.tgt_tokenizer)
    result = subprocess.run([sys.executable, "-m", "xattn_ray", "stitch", "--body", str(tmp_path / "aa-cc.pt"),
                             "--embeddings", str(tmp_path / "dd-bb.pt"), "--side", "source",
                             "--out", str(tmp_path / "dd-cc.pt")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "dd-cc model" in result.stdout
    stitched = load_model(tmp_path / "dd-cc.pt")
    assert languages_of(stitched) == "dd-cc"
    assert stitched.extra["stitched_from"] == {"body": str(tmp_path / "aa-cc.pt"),
                                               "embeddings": str(tmp_path / "dd-bb.pt"), "side": "source"}
    expected = graft_embeddings(new_target, new_source, "source").model.state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in stitched.model.state_dict().items())


def test_stitch_command_mistake_is_one_line_and_exit_2(tokenizers, tmp_path, capsys):
    from xattn_ray.engine.checkpoint import save_model
    from xattn_ray.cli import main

    save_model(tmp_path / "body.pt", Transformer(preset_config("tiny", 60, 60)), tokenizers["aa"], tokenizers["bb"])
    save_model(tmp_path / "wide.pt", Transformer(preset_config("tiny", 64, 60, d_model=64)), tokenizers["dd"],
               tokenizers["bb"])
    status = main(["stitch", "--body", str(tmp_path / "body.pt"), "--embeddings", str(tmp_path / "wide.pt"),
                   "--side", "source", "--out", str(tmp_path / "bad.pt")])
    assert status == 2 and not (tmp_path / "bad.pt").exists()
    assert capsys.readouterr().err.splitlines() == [
        "xattn-ray: error: cannot graft the donor's source embeddings onto the base model: "
        "d_model (base 32, donor 64) differ"]
