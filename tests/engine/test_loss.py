"""The blockwise training loss: the value and every gradient of PyTorch's cross-entropy over the full
logits, in blocks of rows."""

import pytest
import torch
import torch.nn.functional as F

from xattn_ray.engine import loss as loss_module
from xattn_ray.engine.loss import output_loss


def inputs(bias: bool = True):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(23, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    logits_bias = torch.randn(23, generator=generator, dtype=torch.float64, requires_grad=True) if bias else None
    targets = torch.randint(0, 23, (37,), generator=generator)
    return hidden, weight, logits_bias, targets


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("bias", [True, False])
def test_value_and_gradients_equal_cross_entropy_over_the_full_logits(monkeypatch, label_smoothing, bias):
    monkeypatch.setattr(loss_module, "BLOCK_ELEMENTS", 23 * 5)  # 5 rows, raised to the width: 16, 16, 5
    hidden, weight, logits_bias, targets = inputs(bias)
    reference = F.cross_entropy(F.linear(hidden, weight, logits_bias), targets, label_smoothing=label_smoothing,
                                reduction="sum")
    wanted = [t for t in (hidden, weight, logits_bias) if t is not None]
    expected = torch.autograd.grad(3 * reference, wanted)
    blockwise = output_loss(hidden, weight, logits_bias, targets, label_smoothing)
    torch.testing.assert_close(blockwise, reference)
    for got, want in zip(torch.autograd.grad(3 * blockwise, wanted), expected):  # 3: the incoming gradient
        torch.testing.assert_close(got, want)


def test_frozen_weight_gets_no_gradient_and_the_hidden_states_still_do():
    hidden, weight, logits_bias, targets = inputs()
    weight.requires_grad_(False)
    logits_bias.requires_grad_(False)
    output_loss(hidden, weight, logits_bias, targets, 0.1).backward()
    assert weight.grad is None and hidden.grad is not None


def test_without_autograd_only_the_value_is_computed():
    hidden, weight, logits_bias, targets = inputs()
    with torch.no_grad():
        value = output_loss(hidden, weight, logits_bias, targets)
    assert not value.requires_grad
    torch.testing.assert_close(value, F.cross_entropy(F.linear(hidden, weight, logits_bias), targets,
                                                      reduction="sum").detach())
