"""The float32 CPU kernel choice of :func:`dsm.nn.linear.linear`."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from dsm.nn import linear as lin


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
