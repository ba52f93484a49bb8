"""The projection module :class:`dsm.nn.Linear`: CPU kernel choice, row blocks, packed weights."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from dsm.nn import Linear, StackedLinear, packed_weight_bytes, replace_linears, set_cpu_kernels
from dsm.nn import linear as lin
from dsm.nn.host_memory import HostMemory


def _pair(rows: int, d_in: int, d_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 1, d_in, generator=g)
    w = torch.randn(d_out, d_in, generator=g) / d_in**0.5
    return x, w


def _module(
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    matmul: str = "auto",
    pack: bool = False,
    blocks: tuple[int, ...] | None = None,
) -> Linear:
    """A :class:`Linear` holding ``w`` (and ``bias``), with the given kernels."""
    module = Linear(w.shape[1], w.shape[0], bias=bias is not None, dtype=w.dtype, blocks=blocks)
    with torch.no_grad():
        module.weight.copy_(w)
        if bias is not None:
            module.bias.copy_(bias)
    set_cpu_kernels(module, matmul, pack)
    return module


@pytest.mark.parametrize("rows", [1, 3, 8, 16])
def test_large_projection_close_to_f_linear(rows: int) -> None:
    """A weight past the ``auto`` threshold, at streaming batch sizes: float32 rounding only."""
    x, w = _pair(rows, 1024, lin.MIN_WEIGHT_ELEMENTS // 1024, seed=rows)
    bias = torch.randn(w.shape[0])
    module = _module(w, bias)
    with torch.no_grad():
        got = module(x)
        want = F.linear(x, w, bias)
    assert got.shape == want.shape == (rows, 1, w.shape[0])
    err = ((got - want).abs().max() / want.abs().max()).item()
    print(f"rows {rows}: oneDNN vs MKL relative error {err:.2e}")
    assert err < 1e-5


def test_modes() -> None:
    x, w = _pair(4, 64, 32, seed=0)
    module = _module(w, matmul="mkl")
    with torch.no_grad():
        assert torch.equal(module(x), F.linear(x, w))
    assert module.kernels.matmul == "mkl"
    set_cpu_kernels(module, "onednn", pack=False)
    with torch.no_grad():
        assert torch.allclose(module(x), F.linear(x, w), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="auto, onednn, mkl"):
        set_cpu_kernels(module, "fast")


def test_small_weights_stay_on_f_linear_in_auto_mode() -> None:
    # Tiny, and Mimi-like (a 512-wide side, 1M elements): bit-identical to F.linear.
    for d_in, d_out in ((64, 32), (512, 2048), (2048, 512)):
        x, w = _pair(2, d_in, d_out, seed=1)
        module = _module(w, pack=True)
        with torch.no_grad():
            assert torch.equal(module(x), F.linear(x, w))
        assert packed_weight_bytes(module) == 0


def test_square_weights_use_the_fast_kernel_in_auto_mode() -> None:
    x, w = _pair(4, lin.MIN_SQUARE_DIM, lin.MIN_SQUARE_DIM, seed=2)
    module = _module(w)
    with torch.no_grad():
        got, want = module(x), F.linear(x, w)
    # float32 summation order only (AVX2 and AVX-512 kernels differ from MKL by up to ~1e-6
    # of the output's scale, near-zero outputs included)
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5
    if lin.ONEDNN_AVAILABLE:  # oneDNN sums in another order than MKL
        assert module._use_onednn(x, w)


def test_gradients_use_f_linear() -> None:
    """Training needs autograd, which the oneDNN op lacks: grads flow through ``F.linear``."""
    x, w = _pair(2, 16, 8, seed=2)
    module = _module(w, matmul="onednn")
    module(x).sum().backward()
    assert module.weight.grad is not None
    assert torch.allclose(module.weight.grad, x.reshape(-1, 16).sum(0).expand(8, 16))


def test_env_value_is_checked_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment is read when kernels are set (the loaders do), not at import."""
    module = Linear(4, 2)
    monkeypatch.setenv("DSM_CPU_MATMUL", "bogus")
    with pytest.raises(ValueError, match="DSM_CPU_MATMUL"):
        set_cpu_kernels(module)
    monkeypatch.setenv("DSM_CPU_MATMUL", "MKL")
    assert set_cpu_kernels(module).matmul == "mkl" and module.kernels.matmul == "mkl"
    assert set_cpu_kernels(module, "onednn").matmul == "onednn"  # explicit wins


def test_row_blocks_and_per_position_index() -> None:
    """``forward(x, i)`` multiplies by block i; an index per position picks one per step."""
    g = torch.Generator().manual_seed(7)
    w, b = torch.randn(10, 6, generator=g), torch.randn(10, generator=g)
    x = torch.randn(2, 3, 6, generator=g)
    module = _module(w, b, blocks=(4, 6))
    with torch.no_grad():
        assert torch.equal(module(x, 0), F.linear(x, w[:4], b[:4]))
        assert torch.equal(module(x, 1), F.linear(x, w[4:], b[4:]))
        assert torch.allclose(module(x), F.linear(x, w, b))
    stacked = StackedLinear(6, 5, mult=2)
    with torch.no_grad():
        stacked.weight.copy_(w)
        got = stacked(x, (1, 0, 1))
    want = [F.linear(x[:, t : t + 1], w[5 * i : 5 * i + 5]) for t, i in enumerate((1, 0, 1))]
    assert torch.allclose(got, torch.cat(want, dim=1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="row blocks"):
        Linear(6, 10, blocks=(4, 4))


needs_onednn = pytest.mark.skipif(not lin.ONEDNN_AVAILABLE, reason="oneDNN linear op not available")
needs_bf16_pack = pytest.mark.skipif(
    not lin.bf16_packing_available(),
    reason="oneDNN cannot pack bfloat16 weights on this CPU (needs AVX-512 or AVX-NE-CONVERT)",
)
# The packing mechanics hold for both packed dtypes: bfloat16 (any size, where the CPU packs it)
# and float32 (in ``onednn`` mode, any size).
PACK_DTYPES = [
    pytest.param(torch.bfloat16, marks=needs_bf16_pack, id="bf16"),
    pytest.param(torch.float32, id="f32"),
]


def _packing_module(w: torch.Tensor, blocks: tuple[int, ...] | None = None) -> Linear:
    matmul = "onednn" if w.dtype == torch.float32 else "auto"
    return _module(w, matmul=matmul, pack=True, blocks=blocks)


def _plain(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The unpacked product a packing module falls back to: ``F.linear`` for bfloat16, oneDNN's
    on the plain weight for float32 in ``onednn`` mode."""
    if w.dtype == torch.float32:
        return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    return F.linear(x, w)


def test_bfloat16_packing_probe_matches_the_cpu() -> None:
    """The probe says no exactly where oneDNN refuses a bfloat16 reorder, and then bfloat16
    projections still run (on ``F.linear``) with packing requested."""
    x, w = _pair(2, 64, 48, seed=9)
    x, w = x.bfloat16(), w.bfloat16()
    module = _module(w, pack=True)
    with torch.no_grad():
        out = module(x)
    assert torch.equal(out, F.linear(x, w)) or lin.bf16_packing_available()
    assert (packed_weight_bytes(module) > 0) == lin.bf16_packing_available()


@needs_bf16_pack
@pytest.mark.parametrize("rows", [1, 4, 16])
def test_packed_bfloat16_matches_f_linear(rows: int) -> None:
    """bfloat16 weights go through a packed copy; results equal ``F.linear``'s up to rounding."""
    x, w = _pair(rows, 256, 384, seed=10 + rows)
    x, w = x.bfloat16(), w.bfloat16()
    bias = torch.randn(384).bfloat16()
    for b in (None, bias):
        module = _module(w, b, pack=True)
        with torch.no_grad():
            assert module._should_pack(x, w)
            got, want = module(x), F.linear(x, w, b)
        assert packed_weight_bytes(module) == w.numel() * 2
        assert got.dtype == torch.bfloat16 and got.shape == want.shape == (rows, 1, 384)
        exact = F.linear(x.double(), w.double(), None if b is None else b.double())
        err_got = ((got.double() - exact).abs().max() / exact.abs().max()).item()
        err_want = ((want.double() - exact).abs().max() / exact.abs().max()).item()
        print(f"rows {rows} bias {b is not None}: {err_got:.2e} vs F.linear {err_want:.2e}")
        assert err_got <= max(2 * err_want, 8e-3)


@needs_onednn
@pytest.mark.parametrize("dtype", PACK_DTYPES)
def test_packed_weights_follow_the_parameter(dtype: torch.dtype) -> None:
    """Blocks pack separately, an update through ``.weight`` repacks, ``.to`` unpacks."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(64, 32, generator=g).to(dtype)
    x = torch.randn(2, 32, generator=g).to(dtype)
    module = _packing_module(w, blocks=(32, 32))
    with torch.no_grad():
        top, bottom = module(x, 0), module(x, 1)
        assert torch.allclose(top.float(), F.linear(x, w[:32]).float(), rtol=2e-2, atol=2e-2)
        assert torch.allclose(bottom.float(), F.linear(x, w[32:]).float(), rtol=2e-2, atol=2e-2)
        assert module._packs is not None and len(module._packs) == 2
        module.weight.mul_(-1)  # in place, through the attribute: the plain weight comes back
        assert module._packs is None and torch.equal(module.weight, -w)
        assert torch.allclose(module(x, 0).float(), -top.float(), rtol=1e-5, atol=1e-5)
        module.to(torch.float64)  # Module.to converts the plain weight
        assert module._packs is None and torch.equal(module.weight, -w.double())
        assert module(x.double(), 1).dtype == torch.float64


def test_packing_off_in_mkl_mode_and_for_training() -> None:
    x, w = _pair(2, 32, 16, seed=4)
    x, w = x.bfloat16(), w.bfloat16()
    module = _module(w, pack=True)
    module(x)  # grad enabled and the weight requires grad
    assert packed_weight_bytes(module) == 0
    with torch.inference_mode():
        made_here = _module(torch.ones(16, 32, dtype=torch.bfloat16), pack=True)
        assert not made_here._should_pack(x, made_here.weight)  # storage cannot be swapped
        assert torch.equal(made_here(x), F.linear(x, made_here.weight))
    set_cpu_kernels(module, "mkl", pack=True)
    with torch.no_grad():
        assert not module._should_pack(x, w)
        assert torch.equal(module(x), F.linear(x, w))
    assert packed_weight_bytes(module) == 0


@needs_onednn
@pytest.mark.parametrize("rows", [1, 4, 16])
def test_packed_float32_matches_unpacked(rows: int) -> None:
    """Large float32 parameters go through a packed copy: float32 rounding away from MKL and from
    the unpacked oneDNN product, and it holds one copy of the weight's bytes."""
    x, w = _pair(rows, 1024, lin.MIN_WEIGHT_ELEMENTS // 1024, seed=20 + rows)
    module = _module(w, pack=True)
    plain = _module(w, pack=False)
    with torch.no_grad():
        assert module._should_pack(x, w)
        got = module(x)
        assert packed_weight_bytes(module) == w.numel() * 4
        unpacked = plain(x)  # not packed: the oneDNN product on the plain weight
        mkl = F.linear(x, w)
    assert got.shape == mkl.shape == (rows, 1, w.shape[0])
    err_mkl = ((got - mkl).abs().max() / mkl.abs().max()).item()
    err_unpacked = ((got - unpacked).abs().max() / mkl.abs().max()).item()
    print(f"rows {rows}: packed vs MKL {err_mkl:.2e}, vs unpacked oneDNN {err_unpacked:.2e}")
    assert err_mkl < 1e-5 and err_unpacked < 1e-5


@needs_onednn
@pytest.mark.parametrize("dtype", PACK_DTYPES)
def test_packed_module_keeps_one_copy_and_plain_state_dict(dtype: torch.dtype) -> None:
    """Once packed, the parameter holds no storage of its own; ``state_dict`` still gives the
    plain weight in checkpoint layout (exactly), and training then runs on it."""
    x, w = _pair(2, 64, 48, seed=8)
    x, w = x.to(dtype), w.to(dtype)
    module = _packing_module(w)
    with torch.no_grad():
        module(x)
    param = module._parameters["weight"]
    assert param is not None and param.shape == w.shape and param.dtype == w.dtype
    assert param.untyped_storage().nbytes() <= param.element_size()  # no plain copy held
    assert packed_weight_bytes(module) >= w.numel() * w.element_size()
    state = module.state_dict()
    assert list(state) == ["weight"] and torch.equal(state["weight"], w)
    assert packed_weight_bytes(module) == 0  # reading the weights restored the plain one
    with torch.no_grad():
        module(x)
    module(x.requires_grad_(True)).float().sum().backward()  # training: plain weight, grads
    assert packed_weight_bytes(module) == 0 and module.weight.grad is not None


@needs_onednn
@pytest.mark.parametrize("dtype", PACK_DTYPES)
def test_weight_packing_switch_frees_the_copies(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    x, w = _pair(2, 64, 32, seed=5)
    x, w = x.to(dtype), w.to(dtype)
    module = _packing_module(w)
    with torch.no_grad():
        packed = module(x)
        assert packed_weight_bytes(module) >= w.numel() * w.element_size()
        assert set_cpu_kernels(module, module.kernels.matmul, pack=False).pack is False
        assert packed_weight_bytes(module) == 0 and torch.equal(module.weight, w)
        plain = module(x)
        assert packed_weight_bytes(module) == 0  # nothing packed while off
        assert torch.equal(plain, _plain(x, w))
    assert torch.allclose(packed.float(), plain.float(), rtol=2e-2, atol=2e-2)
    monkeypatch.setenv("DSM_CPU_PACK", "0")
    assert lin.cpu_kernels_from_env()[1] is False
    monkeypatch.setenv("DSM_CPU_PACK", "yes")
    assert lin.cpu_kernels_from_env()[1] is True
    monkeypatch.setenv("DSM_CPU_PACK", "maybe")
    with pytest.raises(ValueError, match="DSM_CPU_PACK"):
        lin.cpu_kernels_from_env()


@needs_onednn
@pytest.mark.parametrize("dtype", PACK_DTYPES)
def test_packing_turns_itself_off_when_memory_is_short(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, dtype: torch.dtype
) -> None:
    """A pack that would leave too little memory is not made: packing goes off for the model,
    the packs already made are restored to plain weights, and products run on plain weights."""
    g = torch.Generator().manual_seed(6)
    first = torch.randn(64, 32, generator=g).to(dtype)
    second = torch.randn(64, 32, generator=g).to(dtype)
    x = torch.randn(2, 32, generator=g).to(dtype)
    model = torch.nn.ModuleList([_module(first), _module(second)])
    matmul = "onednn" if dtype == torch.float32 else "auto"
    kernels = set_cpu_kernels(model, matmul, pack=True)
    with torch.no_grad():
        model[0](x)
        assert packed_weight_bytes(model) >= first.numel() * first.element_size()
        gib = 1 << 30
        short = HostMemory(available=gib, total=8 * gib)
        monkeypatch.setattr(lin, "host_memory", lambda: short)
        with caplog.at_level("WARNING", logger="dsm.nn.linear"):
            out = model[1](x)
        assert torch.equal(out, _plain(x, second))
        assert not kernels.pack and packed_weight_bytes(model) == 0
        assert "weight packing is off" in caplog.text and "DSM_CPU_PACK=0" in caplog.text
        assert torch.equal(model[0](x), _plain(x, first))  # stays unpacked
        assert packed_weight_bytes(model) == 0


def test_replace_linears_swaps_every_projection() -> None:
    """Children of modules and of module lists are replaced; the factory sees the original."""
    model = torch.nn.Sequential(Linear(4, 4), torch.nn.ModuleList([Linear(4, 2)]))
    seen: list[Linear] = []

    def factory(module: Linear) -> torch.nn.Module:
        seen.append(module)
        return torch.nn.Identity()

    assert replace_linears(model, factory) is model
    assert len(seen) == 2 and not any(isinstance(m, Linear) for m in model.modules())


def test_bad_environment_does_not_break_import() -> None:
    """An invalid ``DSM_CPU_MATMUL`` fails when a model loads, not when dsm is imported."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DSM_CPU_MATMUL": "bogus", "DSM_CPU_PACK": "maybe"}
    done = subprocess.run(
        [sys.executable, "-c", "import dsm.nn, dsm.models.lm_loading"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
