"""Weight-only quantized projections: the stored integers and scales, the products, row blocks,
the int4 packing and the errors of :mod:`dsm.nn.quantized`."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dsm.errors import ConfigError
from dsm.nn import Linear, StackedLinear
from dsm.nn.linear import projection_dtype
from dsm.nn.quantized import (
    INT4_GROUP_SIZES,
    NATIVE_MAX_ROWS,
    QUANT_MODES,
    QuantizedLinear,
    check_quantize_mode,
    dequantize_int4,
    dequantize_int8,
    quantize_model,
    quantized_mode,
    unpack_nibbles,
)


def _linear(n: int, k: int, *, bias: bool = True, blocks: list[int] | None = None) -> Linear:
    gen = torch.Generator().manual_seed(n * 1000 + k)
    lin = Linear(k, n, bias=bias, blocks=blocks)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=gen) / k**0.5)
        if lin.bias is not None:
            lin.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return lin.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_round_trip_within_half_a_step(group: int) -> None:
    lin = _linear(96, 256)
    q = QuantizedLinear.from_linear(lin, "int4", group)
    values = unpack_nibbles(q.qweight)
    assert q.qweight.dtype == torch.uint8 and q.qweight.shape == (96, 128)
    assert q.scale.shape == q.zero.shape == (96, 256 // group)
    assert int(values.min()) >= 0 and int(values.max()) <= 15
    # Both ends of every group are used: the scale spans the group's range.
    per_group = values.reshape(96, -1, group)
    assert bool((per_group.amin(-1) == 0).all()) and bool((per_group.amax(-1) == 15).all())
    error = (dequantize_int4(q.qweight, q.scale, q.zero) - lin.weight).abs()
    step = q.scale.float().repeat_interleave(group, dim=1)
    assert bool((error <= 0.5 * step * 1.02 + 1e-7).all()), float((error / step).max())
    assert torch.equal(q.dequantize(), dequantize_int4(q.qweight, q.scale, q.zero))


def test_int8_round_trip_within_half_a_step() -> None:
    lin = _linear(80, 96)
    q = QuantizedLinear.from_linear(lin, "int8")
    assert q.qweight.dtype == torch.int8 and q.scale.shape == (80,)
    assert int(q.qweight.abs().max()) == 127
    error = (dequantize_int8(q.qweight, q.scale) - lin.weight).abs()
    step = q.scale.float()[:, None]
    assert bool((error <= 0.5 * step * 1.02 + 1e-7).all()), float((error / step).max())


@pytest.mark.parametrize(
    ("mode", "n", "k"),
    [("int8", 96, 64), ("int8", 48, 40), ("int4", 96, 64), ("int4", 40, 64)],
)
def test_product_is_the_dequantized_product(mode: str, n: int, k: int) -> None:
    """The kernels (and the fallback for shapes they do not take: int4 rows not a multiple of
    16, int8 widths not a multiple of 16) multiply by the stored weight, up to bfloat16
    activations."""
    lin = _linear(n, k)
    q = QuantizedLinear.from_linear(lin, mode, 32)
    x = torch.randn(3, 5, k, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = q(x)
        exact = F.linear(x, q.dequantize(), lin.bias)
    assert out.dtype == torch.float32 and out.shape == (3, 5, n)
    assert _rel(out, exact) < 2e-2


@pytest.mark.parametrize("mode", QUANT_MODES)
def test_row_blocks_as_the_float_module(mode: str) -> None:
    """Whole weight, one block, one block per position: the same selection as
    :class:`dsm.nn.Linear` (the depformer's per-step weights)."""
    lin = StackedLinear(64, 32, mult=3).eval()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(96, 64, generator=torch.Generator().manual_seed(2)) / 8)
    q = QuantizedLinear.from_linear(lin, mode, 32)
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for index in (None, 1, [2], [0, 2, 1]):
            out, ref = (
                q(x if index != [2] else x[:, :1], index),
                lin(x if index != [2] else x[:, :1], index),
            )
            assert out.shape == ref.shape
            bound = 2e-2 if mode == "int8" else 0.2
            assert _rel(out, ref) < bound, (index, _rel(out, ref))


def test_int4_packing_keeps_one_copy_and_restores_exactly() -> None:
    lin = _linear(64, 128, blocks=[32, 32])
    q = QuantizedLinear.from_linear(lin, "int4", 64)
    stored = q.qweight.clone()
    x = torch.randn(NATIVE_MAX_ROWS + 8, 128)  # above the native kernels' rows: PyTorch's kernel
    with torch.no_grad():
        before = q(x)
    assert q.packed_bytes() > 0
    assert q.qweight.stride() == (0, 0)  # the plain nibbles were released
    state = q.state_dict()  # restores them from the packed copy
    assert q.packed_bytes() == 0
    assert torch.equal(state["qweight"], stored)
    with torch.no_grad():
        assert torch.equal(q(x), before)


@pytest.mark.parametrize("mode", QUANT_MODES)
def test_meta_module_loads_a_state_dict(mode: str) -> None:
    lin = _linear(48, 64, blocks=[16, 32])
    q = QuantizedLinear.from_linear(lin, mode, 32)
    empty = QuantizedLinear(64, 48, mode, group_size=32, bias=True, blocks=[16, 32], device="meta")
    empty.load_state_dict(q.state_dict(), assign=True)
    x = torch.randn(2, 64)
    with torch.no_grad():
        assert torch.equal(empty(x, 1), q(x, 1))


def test_to_dtype_changes_activations_not_scales() -> None:
    q = QuantizedLinear.from_linear(_linear(32, 64), "int4", 32)
    q = q.to(torch.bfloat16)
    assert q.scale.dtype == q.zero.dtype == torch.bfloat16
    assert q.qweight.dtype == torch.uint8
    assert projection_dtype(q) == (torch.device("cpu"), torch.bfloat16)
    with torch.no_grad():
        assert q(torch.randn(2, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_gradients_flow_to_the_input() -> None:
    q = QuantizedLinear.from_linear(_linear(32, 64), "int8")
    x = torch.randn(2, 64, requires_grad=True)
    q(x).sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = _linear(32, 64)
        self.keep = nn.Sequential(_linear(32, 64))
        self.narrow = _linear(32, 8)  # no int4 group divides 8 columns


def test_quantize_model_replaces_skips_and_refuses() -> None:
    net = quantize_model(_Net(), "int4", group_size=64, skip=["keep"])
    assert isinstance(net.a, QuantizedLinear) and net.a.group_size == 64
    assert isinstance(net.keep[0], Linear) and isinstance(net.narrow, Linear)
    assert quantized_mode(net) == "int4"
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(net, "int8")
    with pytest.raises(ConfigError, match="int8, int4"):
        quantize_model(_Net(), "int3")
    with pytest.raises(ConfigError, match="32, 64, 128, 256"):
        quantize_model(_Net(), "int4", group_size=48)
    assert check_quantize_mode(None) is None
    assert INT4_GROUP_SIZES == (32, 64, 128, 256)


def test_command_choices_match_the_modes() -> None:
    from dsm.checkpoint import quantization
    from dsm.commands.model_args import QUANT_CHOICES
    from dsm.commands.quantize import BITS

    assert QUANT_CHOICES == QUANT_MODES
    assert quantization._MODES == QUANT_MODES
    assert tuple(BITS.values()) == QUANT_MODES
