"""``LoRALinear``: a fresh adapter changes nothing; with weights it equals the merged projection,
whole or by row blocks (the depformer's per-step weight sets); only the adapter has gradients."""

from __future__ import annotations

import copy

import torch

from dsm.nn.linear import StackedLinear
from dsm.nn.lora import LoRALinear


def test_lora_linear_equals_its_merge() -> None:
    torch.manual_seed(0)
    base = StackedLinear(8, 6, mult=3)
    lora = LoRALinear(copy.deepcopy(base), rank=2, scaling=2.0)
    x = torch.randn(2, 3, 8)
    assert torch.equal(lora(x), base(x))  # B starts at zero
    with torch.no_grad():
        lora.lora_B.weight.normal_()
    merged = copy.deepcopy(lora).merged()
    for index in (None, 1, [0, 2, 1]):
        err = (lora(x, index) - merged(x, index)).abs().max().item()
        assert err < 1e-5, (index, err)
    assert not torch.allclose(lora(x), base(x))
    lora(x, [2, 0, 1]).sum().backward()
    assert lora.base.weight.grad is None
    assert lora.lora_A.weight.grad is not None and lora.lora_B.weight.grad is not None
