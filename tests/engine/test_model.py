"""The Transformer: stable parameter names, the paper's parameter counts, cache-exact incremental decoding."""

from pathlib import Path

import pytest
import torch

from xattn_ray.engine.checkpoint import CheckpointError, load_model, save_model
from xattn_ray.engine.model import Transformer, preset_config
from xattn_ray.engine.tokenizer import PAD_ID

SNAPSHOT = Path(__file__).parent / "snapshots" / "tiny_parameter_names.txt"


def test_parameter_names_and_shapes_match_the_snapshot():
    """Names are the policy vocabulary: changing one silently changes what every policy freezes."""
    model = Transformer(preset_config("tiny", 10, 12))
    listed = [f"{name} {tuple(p.shape)}" for name, p in model.named_parameters()]
    assert listed == SNAPSHOT.read_text().splitlines()


def test_base_cross_attention_group_has_the_papers_size():
    model = Transformer(preset_config("base", 8000, 8000))
    named = dict(model.named_parameters())
    xattn = sum(p.numel() for n, p in named.items() if ".cross_attn" in n)
    assert xattn == 6 * (4 * (512 * 512 + 512) + 2 * 512) == 6_309_888
    assert 52_000_000 < sum(p.numel() for p in named.values()) < 55_000_000  # "about 53M"


def test_output_projection_is_tied_to_target_embeddings():
    model = Transformer(preset_config("tiny", 10, 12))
    hidden = torch.randn(3, 32)
    assert torch.equal(model.output_logits(hidden), hidden @ model.tgt_embed.tokens.weight.T)
    assert not any("output" in name for name, _ in model.named_parameters())


def test_fresh_embeddings_have_zero_pad_rows():
    model = Transformer(preset_config("tiny", 10, 12))
    assert torch.count_nonzero(model.src_embed.tokens.weight[PAD_ID]) == 0
    assert torch.count_nonzero(model.tgt_embed.tokens.weight[PAD_ID]) == 0
    std = model.src_embed.tokens.weight[1:].std().item()
    assert 0.6 * 32 ** -0.5 < std < 1.4 * 32 ** -0.5


def random_batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 10, (3, 7), generator=generator)
    src[0, 5:] = PAD_ID
    tgt = torch.randint(4, 12, (3, 6), generator=generator)
    tgt[:, 0] = 1
    return src, tgt


def test_incremental_decoding_equals_teacher_forcing():
    torch.manual_seed(0)
    model = Transformer(preset_config("tiny", 10, 12)).eval()
    src, tgt = random_batch()
    full = torch.log_softmax(model(src, tgt), dim=-1)
    state = model.start_decoding(src)
    for t in range(tgt.shape[1]):
        torch.testing.assert_close(model.decode_step(tgt[:, t], state), full[:, t], atol=1e-5, rtol=1e-5)


def test_source_padding_does_not_change_outputs():
    torch.manual_seed(0)
    model = Transformer(preset_config("tiny", 10, 12)).eval()
    src, tgt = random_batch()
    padded = torch.cat([src, torch.full((3, 4), PAD_ID)], dim=1)
    torch.testing.assert_close(model(src, tgt), model(padded, tgt), atol=1e-5, rtol=1e-5)


def test_kept_positions_give_the_same_logits_as_the_full_projection():
    torch.manual_seed(0)
    model = Transformer(preset_config("tiny", 10, 12)).eval()
    src, tgt = random_batch()
    keep = torch.rand(tgt.shape) > 0.3
    torch.testing.assert_close(model(src, tgt, keep), model(src, tgt)[keep])


def test_too_long_sequence_is_a_clear_error():
    model = Transformer(preset_config("tiny", 10, 12))
    with pytest.raises(ValueError, match="exceeds max_positions 128"):
        model(torch.ones(1, 129, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        preset_config("huge", 10, 10)


def test_checkpoint_rebuilds_model_and_tokenizers(tmp_path, toy_tokenizers):
    src_tok, tgt_tok = toy_tokenizers
    model = Transformer(preset_config("tiny", src_tok.vocab_size, tgt_tok.vocab_size)).eval()
    save_model(tmp_path / "m.pt", model, src_tok, tgt_tok, {"run": "demo"})
    loaded = load_model(tmp_path / "m.pt", expected=model.config)
    src, tgt = random_batch()
    assert torch.equal(loaded.model.eval()(src, tgt), model(src, tgt))
    assert loaded.src_tokenizer.encode(["word3 thing4"]) == src_tok.encode(["word3 thing4"])
    assert loaded.tgt_tokenizer.language == "bb" and loaded.extra == {"run": "demo"}
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary files left


def test_checkpoint_of_another_architecture_names_the_field(tmp_path, toy_tokenizers):
    src_tok, tgt_tok = toy_tokenizers
    model = Transformer(preset_config("tiny", src_tok.vocab_size, tgt_tok.vocab_size))
    save_model(tmp_path / "m.pt", model, src_tok, tgt_tok)
    expected = preset_config("tiny", src_tok.vocab_size, tgt_tok.vocab_size, d_model=64, heads=4)
    with pytest.raises(CheckpointError, match=r"d_model: expected 64, found 32; heads: expected 4, found 2"):
        load_model(tmp_path / "m.pt", expected=expected)


def test_unreadable_checkpoint_is_a_one_line_error(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as info:
        load_model(tmp_path / "junk.pt")
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(tmp_path / "missing.pt")
