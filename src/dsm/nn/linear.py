"""The matrix product of every large projection, with a faster float32 kernel on x86 CPUs.

``torch.nn.functional.linear`` on a float32 CPU tensor calls MKL's sgemm. For the shapes of a
streaming step (1 to 64 rows against a 2048-wide weight) MKL is far from the memory roofline on
some x86 CPUs (measured on an AMD EPYC with AVX-512, one thread: 8 rows x ``[11264, 2048]`` in
8.7 ms with MKL, 4.7 ms with oneDNN; 1 row 3.6 ms vs 2.8 ms), while oneDNN's matmul, which
PyTorch already uses for bfloat16, is close to it. :func:`linear` sends large float32
projections to oneDNN when no gradient is needed.

The two kernels sum in different orders, so outputs differ by float32 rounding (about 1e-6
relative); the reference (``moshi``) uses MKL. ``DSM_CPU_MATMUL`` selects the kernel:
``auto`` (default: oneDNN on x86 for weights of at least :data:`MIN_WEIGHT_ELEMENTS` elements or
with both dimensions at least :data:`MIN_SQUARE_DIM`: the language models' layers),
``onednn`` (every float32 CPU projection) or ``mkl`` (always ``F.linear``: bit-identical to the
reference).

Packed weights (CPU, float32 and bfloat16): oneDNN runs fastest against a weight in its own
blocked layout. ``F.linear`` in bfloat16 reorders the plain ``[D_out, D_in]`` weight into that
layout on every call (which caps a streaming step at about 17 GB/s of weights on one core), and
the float32 oneDNN product on a plain weight reads it more slowly than a blocked one. So
:func:`linear` keeps a packed copy of each parameter (or slice of one) that it sends to oneDNN
(made on first use with
``torch.ops.mkldnn._reorder_linear_weight``, refreshed when the weight changes) and multiplies
against it. One row: bfloat16 2.4x faster, float32 about 1.25x (1.4x at 4 rows); results equal
the unpacked product's up to float32 summation order. The packed copies double the memory of
the projection weights: ``DSM_CPU_PACK=0`` (or :func:`set_weight_packing`) turns packing off and
frees them, ``DSM_CPU_MATMUL=mkl`` turns off both packing and oneDNN. Packing also switches itself
off, with a warning, when a new pack would leave less than :data:`MIN_FREE_BYTES` (or an eighth of
the memory of the machine, or of its container's cgroup limit) available.
"""

from __future__ import annotations

import logging
import os
import platform
import weakref
from typing import NamedTuple

import torch
from torch.nn import functional as F

from .host_memory import host_memory

_log = logging.getLogger(__name__)

__all__ = [
    "MIN_FREE_BYTES",
    "MIN_SQUARE_DIM",
    "MIN_WEIGHT_ELEMENTS",
    "clear_packed_weights",
    "cpu_matmul_mode",
    "linear",
    "packed_weight_bytes",
    "set_cpu_matmul_mode",
    "set_weight_packing",
    "weight_packing",
]

# Smaller weights (Mimi's 512-wide transformer, heads) stay on MKL: the gain is small there and
# Mimi's codes come from an argmin that is best kept bit-identical to the reference.
MIN_WEIGHT_ELEMENTS = 1 << 21
# Square-ish weights from this size on also go to oneDNN (the depformer's 1024 x 1024 output
# projection: 1.5x faster at 4 rows); every Mimi weight has a 512-wide side and stays on MKL.
MIN_SQUARE_DIM = 1024

_MODES = ("auto", "onednn", "mkl")


def _onednn_available() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    return hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _mode_from_env() -> str:
    mode = os.environ.get("DSM_CPU_MATMUL", "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"DSM_CPU_MATMUL must be one of {', '.join(_MODES)}, got {mode!r}")
    return mode


def _packing_from_env() -> bool:
    value = os.environ.get("DSM_CPU_PACK", "1").strip().lower() or "1"
    if value not in ("0", "1", "false", "true", "no", "yes", "off", "on"):
        raise ValueError(f"DSM_CPU_PACK must be 1 (pack CPU weights, default) or 0, got {value!r}")
    return value in ("1", "true", "yes", "on")


_AVAILABLE = _onednn_available()
_mode = _mode_from_env()
_packing = _packing_from_env()


def cpu_matmul_mode() -> str:
    """The float32 CPU kernel policy in effect: ``auto``, ``onednn`` or ``mkl``."""
    return _mode


def set_cpu_matmul_mode(mode: str) -> str:
    """Set the float32 CPU kernel policy (see the module docstring); returns the previous one."""
    global _mode
    if mode not in _MODES:
        raise ValueError(f"cpu matmul mode must be one of {', '.join(_MODES)}, got {mode!r}")
    previous, _mode = _mode, mode
    return previous


def weight_packing() -> bool:
    """Whether CPU projections multiply packed copies of their weights (see module docstring)."""
    return _packing


def set_weight_packing(enabled: bool) -> bool:
    """Turn weight packing on or off (off frees the packed copies); returns the previous setting."""
    global _packing
    previous, _packing = _packing, bool(enabled)
    if not _packing:
        clear_packed_weights()
    return previous


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if _mode == "mkl" or not _AVAILABLE:
        return False
    if x.device.type != "cpu" or weight.dtype != torch.float32 or x.dtype != torch.float32:
        return False
    if (
        _mode == "auto"
        and weight.numel() < MIN_WEIGHT_ELEMENTS
        and min(weight.shape) < MIN_SQUARE_DIM
    ):
        return False
    if torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad):
        return False  # the oneDNN op has no autograd formula
    return weight.is_contiguous()


def _use_packed(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """bfloat16 projections, and the float32 ones that go to oneDNN, multiply a packed copy."""
    if not _packing or _mode == "mkl" or not _AVAILABLE:
        return False
    if x.device.type != "cpu" or x.dtype != weight.dtype:
        return False
    if weight.dtype == torch.float32:
        if not _use_onednn(x, weight):
            return False
    elif weight.dtype != torch.bfloat16:
        return False
    if weight.dim() != 2 or weight.layout != torch.strided or not weight.is_contiguous():
        return False
    # Only parameters (or slices of one) are packed: a weight made per call would be packed per
    # call. Inference tensors have no version counter, so an in-place change would go unseen.
    base = weight._base if weight._base is not None else weight
    if not isinstance(base, torch.nn.Parameter) or base.is_inference():
        return False
    return not torch.is_grad_enabled() or not (weight.requires_grad or x.requires_grad)


class _Packed(NamedTuple):
    version: int
    weight: torch.Tensor  # the oneDNN blocked copy


# id(base tensor) -> packs of that tensor's slices. Weights are often slices of one parameter
# (the depformer's per-step weights, the fused K/V projection), so entries hang off the parameter
# the slice views, and go when it is freed. A slice shares its base's version counter, so an
# in-place update (``load_state_dict``) is seen; a parameter whose ``.data`` was swapped (``.to``)
# has a new data pointer, which drops its old packs.
class _BasePacks(NamedTuple):
    data_ptr: int
    packs: dict[tuple[int, tuple[int, ...]], _Packed]


_PACKED: dict[int, _BasePacks] = {}
# Row count oneDNN picks the blocked layout for. Any value from 4 up gives float32 its fast layout
# for 1 to 1024 rows (1 gives the plain layout's speed); bfloat16 gets the same layout for all.
_PACK_ROWS = 16
# A pack is only made while the memory still available afterwards stays above this many bytes
# and above an eighth of the total (the machine's or the container's, see
# :mod:`dsm.nn.host_memory`). Below that, packing is switched off for the process (packs freed),
# so the speed-up does not push the process out of memory.
MIN_FREE_BYTES = 1 << 30


def _room_for(nbytes: int) -> bool:
    """Whether ``nbytes`` more leave enough memory available (always True where unknown)."""
    memory = host_memory()
    if memory is None or memory.available - nbytes >= max(MIN_FREE_BYTES, memory.total // 8):
        return True
    global _packing
    _packing = False
    held = packed_weight_bytes()
    clear_packed_weights()
    _log.warning(
        "dsm: only %.1f GB of memory available: CPU weight packing is off for this process "
        "(%.1f GB of packs freed; projections run on the plain weights, slower). Set "
        "DSM_CPU_PACK=0 (or --no-pack-weights) to skip packing from the start.",
        memory.available / 1e9,
        held / 1e9,
    )
    return False


def _drop_packed(key: int) -> None:
    _PACKED.pop(key, None)


def _packed_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """The packed copy of ``weight``, made or refreshed if needed; None when memory is short."""
    base = weight._base if weight._base is not None else weight
    entries = _PACKED.get(id(base))
    if entries is None:
        weakref.finalize(base, _drop_packed, id(base))
    if entries is None or entries.data_ptr != base.data_ptr():
        entries = _PACKED[id(base)] = _BasePacks(base.data_ptr(), {})
    key = (weight.data_ptr(), tuple(weight.shape))
    entry = entries.packs.get(key)
    if entry is None or entry.version != weight._version:
        if entry is None and not _room_for(weight.numel() * weight.element_size()):
            return None
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACK_ROWS)
        entry = entries.packs[key] = _Packed(weight._version, packed)
    return entry.weight


def clear_packed_weights() -> None:
    """Forget every packed weight (they are rebuilt on next use while packing is on)."""
    _PACKED.clear()


def packed_weight_bytes() -> int:
    """Bytes of weight data held in packed copies (the memory that ``DSM_CPU_PACK=0`` saves)."""
    return sum(
        pack.weight.numel() * pack.weight.element_size()
        for entries in _PACKED.values()
        for pack in entries.packs.values()
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [..., D_in] @ weight[D_out, D_in]^T (+ bias)``, like ``F.linear``."""
    if _use_packed(x, weight):
        packed = _packed_weight(weight)
        if packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    if _use_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)
