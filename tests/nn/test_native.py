"""dsm's native int8 CPU kernel (:mod:`dsm.nn.native`): against float64 products of the
dequantized weights, batch-invariant, and the fallback when it is switched off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dsm.nn import native
from dsm.nn.linear import Linear
from dsm.nn.quantized import (
    NATIVE_MAX_ROWS,
    QuantizedLinear,
    dequantize_int8,
    quantize_int8,
)


def _forced() -> native.NativeKernels | None:
    """The kernels wherever they build (``DSM_NATIVE_KERNELS=1``; the default leaves AVX-512
    CPUs to PyTorch), without changing the process's setting."""
    before = os.environ.get("DSM_NATIVE_KERNELS")
    os.environ["DSM_NATIVE_KERNELS"] = "1"
    native._load.cache_clear()
    try:
        return native.kernels()
    finally:
        if before is None:
            del os.environ["DSM_NATIVE_KERNELS"]
        else:
            os.environ["DSM_NATIVE_KERNELS"] = before
        native._load.cache_clear()


KERNELS = _forced()
needs_kernels = pytest.mark.skipif(
    KERNELS is None,
    reason="native kernels unavailable here (no C compiler, no AVX2/FMA, or not x86-64)",
)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@needs_kernels
@pytest.mark.parametrize("M", [1, 2, 3, 8])
@pytest.mark.parametrize("K", [48, 1024, 1000])  # 1000 and 48: not multiples of the 32-wide loop
def test_int8_equals_dequantized_product(M: int, K: int) -> None:
    assert KERNELS is not None
    gen = torch.Generator().manual_seed(K + M)
    q, s = quantize_int8(torch.randn(96, K, generator=gen))
    x = torch.randn(M, K, generator=gen)
    expected = x.double() @ dequantize_int8(q, s).double().t()
    assert _rel(KERNELS.int8(x, q, s), expected) < 1e-5


@needs_kernels
def test_rows_do_not_depend_on_the_batch() -> None:
    """A slot's output is the same alone or among others (summation order fixed per row)."""
    assert KERNELS is not None
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(7, 512, generator=gen)
    q, s = quantize_int8(torch.randn(64, 512, generator=gen))
    full, alone = KERNELS.int8(x, q, s), KERNELS.int8(x[4:5].contiguous(), q, s)
    assert torch.equal(full[4:5], alone)


@needs_kernels
def test_kernels_check_their_inputs() -> None:
    assert KERNELS is not None
    q, s = quantize_int8(torch.randn(16, 32))
    with pytest.raises(ValueError, match="expected a CPU"):
        KERNELS.int8(torch.randn(1, 32, dtype=torch.float64), q, s)
    with pytest.raises(ValueError, match="contiguous"):
        KERNELS.int8(torch.randn(32, 2).t(), q, s)


def test_quantized_linear_same_with_and_without_native(monkeypatch: pytest.MonkeyPatch) -> None:
    """An int8 projection gives the dequantized product either way (the native kernel in float32
    activations, PyTorch's in bfloat16); off with DSM_NATIVE_KERNELS=0."""
    gen = torch.Generator().manual_seed(9)
    lin = Linear(256, 64, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(64, 256, generator=gen) / 16)
    x = torch.randn(NATIVE_MAX_ROWS, 256, generator=gen)
    results = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("DSM_NATIVE_KERNELS", setting)
        native._load.cache_clear()
        used = native.kernels() is not None
        assert used == (setting == "1" and KERNELS is not None)
        q = QuantizedLinear.from_linear(lin, "int8")
        with torch.no_grad():
            results[setting] = q(x)
        expected = x.double() @ q.dequantize().double().t()
        assert _rel(results[setting], expected) < (1e-5 if used else 1e-2)
    native._load.cache_clear()


def test_bad_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSM_NATIVE_KERNELS", "fast")
    native._load.cache_clear()
    try:
        with pytest.raises(ValueError, match="DSM_NATIVE_KERNELS must be auto"):
            native.kernels()
    finally:
        native._load.cache_clear()


def test_build_failure_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A compiler that fails gives None and a warning that says what to do, not an error."""
    monkeypatch.setenv("DSM_NATIVE_KERNELS", "1")
    monkeypatch.setattr(native, "_unavailable_reason", lambda: None)
    monkeypatch.setattr(native, "_compiler", lambda: "false")  # exits 1, prints nothing
    monkeypatch.setenv("DSM_KERNEL_CACHE", str(tmp_path))
    native._load.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            assert native.kernels() is None
        assert "DSM_NATIVE_KERNELS=0" in caplog.text
    finally:
        native._load.cache_clear()


@pytest.mark.parametrize(
    ("capability", "amx", "native_by_default"),
    [("AVX2", False, True), ("AVX512", False, False), ("AVX512", True, True)],
)
def test_auto_setting_follows_the_measured_rule(
    monkeypatch: pytest.MonkeyPatch, capability: str, amx: bool, native_by_default: bool
) -> None:
    """``auto``: the kernels on AVX2 CPUs and on AVX-512 CPUs with AMX, PyTorch's on other
    AVX-512 CPUs (where PyTorch's were measured faster); ``1`` forces them everywhere."""
    monkeypatch.setattr(native.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(native.torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(native, "_cpu_has_flag", lambda flag: amx and flag == "amx_int8")
    monkeypatch.setenv("DSM_NATIVE_KERNELS", "auto")
    reason = native._unavailable_reason()
    assert (reason is None) == native_by_default, reason
    if reason is not None:
        assert "DSM_NATIVE_KERNELS=1 forces" in reason
    monkeypatch.setenv("DSM_NATIVE_KERNELS", "1")
    assert native._unavailable_reason() is None


def test_cpu_flags_are_read_from_cpuinfo() -> None:
    import platform

    if platform.system() != "Linux":
        pytest.skip("/proc/cpuinfo is Linux's")
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    assert native._cpu_has_flag("no_such_flag_xyz") is False
    if flags:
        assert native._cpu_has_flag(flags[0]) is True
