"""The CPU kernel choice and packed weights of :func:`dsm.nn.linear.linear`."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from dsm.nn import linear as lin
from dsm.nn.host_memory import HostMemory


def _pair(rows: int, d_in: int, d_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 1, d_in, generator=g)
    w = torch.randn(d_out, d_in, generator=g) / d_in**0.5
    return x, w


@pytest.mark.parametrize("rows", [1, 3, 8, 16])
def test_large_projection_close_to_f_linear(rows: int) -> None:
    """A weight past the ``auto`` threshold, at streaming batch sizes: float32 rounding only."""
    x, w = _pair(rows, 1024, lin.MIN_WEIGHT_ELEMENTS // 1024, seed=rows)
    bias = torch.randn(w.shape[0])
    with torch.no_grad():
        got = lin.linear(x, w, bias)
        want = F.linear(x, w, bias)
    assert got.shape == want.shape == (rows, 1, w.shape[0])
    err = ((got - want).abs().max() / want.abs().max()).item()
    print(f"rows {rows}: oneDNN vs MKL relative error {err:.2e}")
    assert err < 1e-5


def test_modes() -> None:
    x, w = _pair(4, 64, 32, seed=0)
    previous = lin.set_cpu_matmul_mode("mkl")
    try:
        with torch.no_grad():
            assert torch.equal(lin.linear(x, w), F.linear(x, w))
        assert lin.cpu_matmul_mode() == "mkl"
        lin.set_cpu_matmul_mode("onednn")
        with torch.no_grad():
            assert torch.allclose(lin.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="auto, onednn, mkl"):
            lin.set_cpu_matmul_mode("fast")
    finally:
        lin.set_cpu_matmul_mode(previous)


def test_small_weights_stay_on_f_linear_in_auto_mode() -> None:
    previous = lin.set_cpu_matmul_mode("auto")
    try:
        # Tiny, and Mimi-like (a 512-wide side, 1M elements): bit-identical to F.linear.
        for d_in, d_out in ((64, 32), (512, 2048), (2048, 512)):
            x, w = _pair(2, d_in, d_out, seed=1)
            with torch.no_grad():
                assert torch.equal(lin.linear(x, w), F.linear(x, w))
    finally:
        lin.set_cpu_matmul_mode(previous)


def test_square_weights_use_the_fast_kernel_in_auto_mode() -> None:
    x, w = _pair(4, lin.MIN_SQUARE_DIM, lin.MIN_SQUARE_DIM, seed=2)
    previous = lin.set_cpu_matmul_mode("auto")
    try:
        with torch.no_grad():
            got, want = lin.linear(x, w), F.linear(x, w)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
        if lin._AVAILABLE:  # oneDNN sums in another order than MKL
            assert lin._use_onednn(x, w)
    finally:
        lin.set_cpu_matmul_mode(previous)


def test_gradients_use_f_linear() -> None:
    """Training needs autograd, which the oneDNN op lacks: grads flow through ``F.linear``."""
    x, w = _pair(2, 16, 8, seed=2)
    w.requires_grad_(True)
    previous = lin.set_cpu_matmul_mode("onednn")
    try:
        lin.linear(x, w).sum().backward()
    finally:
        lin.set_cpu_matmul_mode(previous)
    assert w.grad is not None
    assert torch.allclose(w.grad, x.reshape(-1, 16).sum(0).expand(8, 16))


def test_env_value_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSM_CPU_MATMUL", "bogus")
    with pytest.raises(ValueError, match="DSM_CPU_MATMUL"):
        lin._mode_from_env()
    monkeypatch.setenv("DSM_CPU_MATMUL", "MKL")
    assert lin._mode_from_env() == "mkl"


needs_onednn = pytest.mark.skipif(not lin._AVAILABLE, reason="oneDNN linear op not available")


@needs_onednn
@pytest.mark.parametrize("rows", [1, 4, 16])
def test_packed_bfloat16_matches_f_linear(rows: int) -> None:
    """bfloat16 weights go through a packed copy; results equal ``F.linear``'s up to rounding."""
    x, w = _pair(rows, 256, 384, seed=10 + rows)
    x, w = x.bfloat16(), torch.nn.Parameter(w.bfloat16())
    bias = torch.randn(384).bfloat16()
    with torch.no_grad():
        assert lin._use_packed(x, w)
        for b in (None, bias):
            got, want = lin.linear(x, w, b), F.linear(x, w, b)
            assert got.dtype == torch.bfloat16 and got.shape == want.shape == (rows, 1, 384)
            exact = F.linear(x.double(), w.double(), None if b is None else b.double())
            err_got = ((got.double() - exact).abs().max() / exact.abs().max()).item()
            err_want = ((want.double() - exact).abs().max() / exact.abs().max()).item()
            print(f"rows {rows} bias {b is not None}: {err_got:.2e} vs F.linear {err_want:.2e}")
            assert err_got <= max(2 * err_want, 8e-3)
    lin.clear_packed_weights()


@needs_onednn
def test_packed_weights_follow_the_parameter() -> None:
    """Slices pack separately, in-place updates repack, and a freed parameter frees its packs."""
    g = torch.Generator().manual_seed(3)
    param = torch.nn.Parameter(torch.randn(64, 32, generator=g).bfloat16())
    x = torch.randn(2, 32, generator=g).bfloat16()
    with torch.no_grad():
        top, bottom = lin.linear(x, param[:32]), lin.linear(x, param[32:])
        assert torch.allclose(top.float(), F.linear(x, param[:32]).float(), rtol=2e-2, atol=2e-2)
        assert torch.allclose(bottom.float(), F.linear(x, param[32:]).float(), rtol=2e-2, atol=2e-2)
        assert len(lin._PACKED[id(param)].packs) == 2
        param.mul_(-1)  # in place, as load_state_dict does
        assert torch.equal(lin.linear(x, param[:32]), -top)
        param.data = param.data.clone()  # what Module.to does: old packs go
        assert torch.equal(lin.linear(x, param[32:]), -bottom)
        assert len(lin._PACKED[id(param)].packs) == 1
    key = id(param)
    del param
    assert key not in lin._PACKED


def test_packing_off_in_mkl_mode_and_for_training() -> None:
    x, w = _pair(2, 32, 16, seed=4)
    x, w = x.bfloat16(), torch.nn.Parameter(w.bfloat16())
    assert not lin._use_packed(x, w)  # grad enabled and the weight requires grad
    with torch.no_grad():
        assert not lin._use_packed(x, w.detach().clone())  # not a parameter: not worth packing
    with torch.inference_mode():
        made_here = torch.nn.Parameter(torch.ones(16, 32, dtype=torch.bfloat16))
        assert not lin._use_packed(x, made_here)  # no version counter to see updates
        assert torch.equal(lin.linear(x, made_here), F.linear(x, made_here))
    previous = lin.set_cpu_matmul_mode("mkl")
    try:
        with torch.no_grad():
            assert not lin._use_packed(x, w)
            assert torch.equal(lin.linear(x, w), F.linear(x, w))
    finally:
        lin.set_cpu_matmul_mode(previous)


@needs_onednn
@pytest.mark.parametrize("rows", [1, 4, 16])
def test_packed_float32_matches_unpacked(rows: int) -> None:
    """Large float32 parameters go through a packed copy: float32 rounding away from MKL and from
    the unpacked oneDNN product, and it holds one copy of the weight's bytes."""
    x, w = _pair(rows, 1024, lin.MIN_WEIGHT_ELEMENTS // 1024, seed=20 + rows)
    param = torch.nn.Parameter(w)
    lin.clear_packed_weights()
    previous = lin.set_cpu_matmul_mode("auto")
    try:
        with torch.no_grad():
            assert lin._use_packed(x, param)
            got = lin.linear(x, param)
            assert lin.packed_weight_bytes() == w.numel() * 4
            unpacked = lin.linear(x, w)  # a plain tensor: not packed
            mkl = F.linear(x, w)
    finally:
        lin.set_cpu_matmul_mode(previous)
        lin.clear_packed_weights()
    assert got.shape == mkl.shape == (rows, 1, w.shape[0])
    err_mkl = ((got - mkl).abs().max() / mkl.abs().max()).item()
    err_unpacked = ((got - unpacked).abs().max() / mkl.abs().max()).item()
    print(f"rows {rows}: packed vs MKL {err_mkl:.2e}, vs unpacked oneDNN {err_unpacked:.2e}")
    assert err_mkl < 1e-5 and err_unpacked < 1e-5


@needs_onednn
def test_weight_packing_switch_frees_the_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    x, w = _pair(2, 64, 32, seed=5)
    x, param = x.bfloat16(), torch.nn.Parameter(w.bfloat16())
    previous = lin.set_weight_packing(True)
    try:
        with torch.no_grad():
            packed = lin.linear(x, param)
            assert lin.packed_weight_bytes() == param.numel() * 2
            assert lin.set_weight_packing(False) is True
            assert not lin.weight_packing() and lin.packed_weight_bytes() == 0
            plain = lin.linear(x, param)
            assert lin.packed_weight_bytes() == 0  # nothing packed while off
            assert torch.equal(plain, F.linear(x, param))
        assert torch.allclose(packed.float(), plain.float(), rtol=2e-2, atol=2e-2)
    finally:
        lin.set_weight_packing(previous)
        lin.clear_packed_weights()
    monkeypatch.setenv("DSM_CPU_PACK", "0")
    assert lin._packing_from_env() is False
    monkeypatch.setenv("DSM_CPU_PACK", "yes")
    assert lin._packing_from_env() is True
    monkeypatch.setenv("DSM_CPU_PACK", "maybe")
    with pytest.raises(ValueError, match="DSM_CPU_PACK"):
        lin._packing_from_env()


@needs_onednn
def test_packing_turns_itself_off_when_memory_is_short(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A pack that would leave too little memory is not made: packing goes off for the process,
    the packs already made are freed, and the product runs on the plain weight."""
    g = torch.Generator().manual_seed(6)
    first = torch.nn.Parameter(torch.randn(64, 32, generator=g).bfloat16())
    second = torch.nn.Parameter(torch.randn(64, 32, generator=g).bfloat16())
    x = torch.randn(2, 32, generator=g).bfloat16()
    previous = lin.set_weight_packing(True)
    try:
        with torch.no_grad():
            lin.linear(x, first)
            assert lin.packed_weight_bytes() == first.numel() * 2
            gib = 1 << 30
            short = HostMemory(available=gib, total=8 * gib)
            monkeypatch.setattr(lin, "host_memory", lambda: short)
            with caplog.at_level("WARNING", logger="dsm.nn.linear"):
                out = lin.linear(x, second)
            assert torch.equal(out, F.linear(x, second))
            assert not lin.weight_packing() and lin.packed_weight_bytes() == 0
            assert "weight packing is off" in caplog.text and "DSM_CPU_PACK=0" in caplog.text
            assert torch.equal(lin.linear(x, first), F.linear(x, first))  # stays unpacked
    finally:
        lin.set_weight_packing(previous)
        lin.clear_packed_weights()
