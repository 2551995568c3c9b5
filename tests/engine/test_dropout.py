"""The CPU dropout drawn from 16-bit numbers: its rate, its exact scale, its gradient, its reproducibility,
and attention's own matrix-product path (with dropout, causal) against `scaled_dot_product_attention`."""

import pytest
import torch
import torch.nn.functional as F

from xattn_ray.engine.attention import MultiHeadAttention, attend_with_matmuls, by_matmuls_on_cpu
from xattn_ray.engine.dropout import LEVELS, Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_an_element_is_dropped_at_the_rate_and_a_kept_one_scaled_by_the_inverse_of_its_keeping_odds(p):
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 1.0  # no zeros of its own
    out = dropout(x, p)
    threshold = round(p * LEVELS)
    kept = out != 0
    # 10^6 elements: the kept share's standard deviation is below 0.0005
    assert abs(kept.float().mean().item() - (1 - threshold / LEVELS)) < 0.0025
    torch.testing.assert_close(out[kept], x[kept] * (LEVELS / (LEVELS - threshold)), rtol=1e-6, atol=0)
    # unbiased: the output's mean is the input's
    assert abs(out.mean().item() / x.mean().item() - 1) < 0.005


def test_masks_are_spread_over_the_whole_tensor_not_repeated():
    torch.manual_seed(0)
    out = dropout(torch.ones(4096, 64), 0.5)
    rows = (out != 0).float().mean(1)
    assert rows.std().item() < 0.12  # a row of 64 Bernoulli(0.5) draws has a std of 0.0625
    assert len({tuple(row.tolist()) for row in (out != 0).int()[:512]}) == 512  # no row pattern repeats


def test_a_seed_or_a_saved_generator_state_gives_the_same_masks():
    x = torch.randn(37, 53)  # not a multiple of four elements
    torch.manual_seed(3)
    first = dropout(x, 0.2)
    state = torch.get_rng_state()
    second = dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.2), first)
    torch.set_rng_state(state)
    assert torch.equal(dropout(x, 0.2), second)
    assert not torch.equal(first, second)


def test_the_gradient_is_the_mask_of_scales():
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    out = dropout(x, 0.25)
    out.sum().backward()
    scales = torch.where(out != 0, out / x.detach(), 0.0)
    torch.testing.assert_close(x.grad, scales)


def test_evaluation_and_a_zero_rate_leave_the_input_alone():
    x = torch.randn(8, 8)
    assert dropout(x, 0.3, training=False) is x
    assert dropout(x, 0.0) is x
    module = Dropout(0.3)
    module.eval()
    assert module(x) is x
    module.train()
    assert not torch.equal(module(x), x)


def queries_keys_values():
    torch.manual_seed(0)
    batch, heads, length, width = 3, 2, 7, 8
    q, k, v = (torch.randn(batch, heads, length, width) for _ in range(3))
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[1, ..., 5:] = False  # sentence 1 has 5 real keys
    return q, k, v, mask


def test_attention_by_matrix_products_matches_scaled_dot_product_attention_with_masks_and_causality():
    q, k, v, mask = queries_keys_values()
    torch.testing.assert_close(attend_with_matmuls(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, mask))
    torch.testing.assert_close(attend_with_matmuls(q, k, v, None, causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_attention_dropout_drops_probabilities_and_keeps_their_expectation():
    q, k, v, mask = queries_keys_values()
    plain = attend_with_matmuls(q, k, v, mask, causal=True)
    torch.manual_seed(5)
    draws = torch.stack([attend_with_matmuls(q, k, v, mask, causal=True, dropout=0.3) for _ in range(4000)])
    assert not torch.equal(draws[0], draws[1])
    torch.testing.assert_close(draws.mean(0), plain, atol=0.05, rtol=0)


def test_on_a_cpu_training_attention_takes_the_matrix_product_path_and_long_inference_the_fused_one():
    queries = torch.zeros(2, 2, 20, 4)
    assert by_matmuls_on_cpu(queries, dropout=0.1, causal=True)
    assert not by_matmuls_on_cpu(queries, dropout=0.0, causal=False)
    assert by_matmuls_on_cpu(queries[:, :, :1], dropout=0.0, causal=False)


def test_a_training_attention_layer_drops_its_probabilities_and_an_evaluating_one_does_not():
    torch.manual_seed(0)
    layer = MultiHeadAttention(d_model=16, heads=2, dropout=0.3)
    x = torch.randn(3, 7, 16)
    keys, values = layer.project_keys_values(x)
    layer.eval()
    plain = layer(x, keys, values, causal=True)
    torch.testing.assert_close(layer(x, keys, values, causal=True), plain)
    layer.train()
    with torch.no_grad():
        draws = torch.stack([layer(x, keys, values, causal=True) for _ in range(4000)])
    assert not torch.equal(draws[0], draws[1])
    torch.testing.assert_close(draws.mean(0), plain, atol=0.05, rtol=0)
