"""Decoding on oneDNN-prepacked weights: the same numbers as plain float32, and the packed copies exist
only inside `Transformer.prepacked`."""

import pytest
import torch

from xattn_ray.engine.decode import beam_search
from xattn_ray.engine.model import Transformer, preset_config
from xattn_ray.engine.prepacked import Linear, can_pack
from xattn_ray.engine.tokenizer import EOS_ID

pytestmark = pytest.mark.skipif(not can_pack(torch.zeros(1)), reason="this torch has no oneDNN linear operators")


def model_and_sources() -> tuple[Transformer, torch.Tensor]:
    torch.manual_seed(0)
    model = Transformer(preset_config("tiny", 40, 50)).eval()
    with torch.no_grad():  # fresh biases are zero: give every bias (and the rest) something to add
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    src = torch.randint(4, 40, (6, 9))
    src[:, -1] = EOS_ID
    return model, src


def test_prepacked_decoding_steps_give_the_plain_log_probabilities():
    model, src = model_and_sources()
    tokens = torch.full((6,), 1)
    with torch.inference_mode():
        plain = model.decode_step(tokens, model.start_decoding(src))
        with model.prepacked():
            assert all(linear.packed is not None for linear in model.modules() if isinstance(linear, Linear))
            assert model.packed_output is not None
            packed = model.decode_step(tokens, model.start_decoding(src))
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)


def test_packed_copies_are_gone_after_a_search_so_training_sees_its_own_weights():
    model, src = model_and_sources()
    first = beam_search(model, src)
    assert all(linear.packed is None for linear in model.modules() if isinstance(linear, Linear))
    assert model.packed_output is None
    model.train()
    loss = model(src, src).logsumexp(-1).sum()
    loss.backward()  # the plain path: parameters get gradients
    assert model.decoder.layers[0].ffn.fc1.weight.grad is not None
    with torch.no_grad():  # a different model now: a search must see it, not an old packed copy
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    assert beam_search(model, src) != first


def test_a_model_oneDNN_cannot_take_decodes_unpacked():
    model, src = model_and_sources()
    model = model.to(torch.bfloat16)
    with model.prepacked():
        assert model.packed_output is None
        assert all(linear.packed is None for linear in model.modules() if isinstance(linear, Linear))


def test_under_bf16_autocast_the_packed_copies_step_aside():
    """A bf16 input must not meet a float32 packed weight (oneDNN refuses the mix): autocast decides."""
    model, src = model_and_sources()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model.decode_step(torch.full((6,), 1), model.start_decoding(src))
        with model.prepacked():
            packed = model.decode_step(torch.full((6,), 1), model.start_decoding(src))
    torch.testing.assert_close(packed, plain)
