"""The projection module: every large matrix product of the models happens in its ``forward``.

:class:`Linear` is a ``torch.nn.Linear`` (same ``weight``/``bias`` names, so checkpoint keys are
unchanged) whose rows may be split into blocks selected per call: the depformer's per-step
weight sets and the fused q|k|v projection are one weight, and ``forward(x, index)`` multiplies
by one block (or, per position, by the block a schedule names) without slicing in the caller.
Streaming inference, the teacher-forced forward and training all call the module, so swapping it
(:func:`replace_linears`, e.g. for a LoRA or int8 projection) changes every path at once.

CPU kernels. ``F.linear`` on a float32 CPU tensor calls MKL's sgemm. For the shapes of a
streaming step (1 to 64 rows against a 2048-wide weight) MKL is far from the memory roofline on
some x86 CPUs (measured on an AMD EPYC with AVX-512, one thread: 8 rows x ``[11264, 2048]`` in
8.7 ms with MKL, 4.7 ms with oneDNN; 1 row 3.6 ms vs 2.8 ms), while oneDNN's matmul, which
PyTorch already uses for bfloat16, is close to it. The two kernels sum in different orders, so
outputs differ by float32 rounding (about 1e-6 relative); the reference (``moshi``) uses MKL.
Each module's ``cpu_matmul`` selects its float32 kernel: ``auto`` (oneDNN on x86 for weights of
at least :data:`MIN_WEIGHT_ELEMENTS` elements or with both dimensions at least
:data:`MIN_SQUARE_DIM`: the language models' layers), ``onednn`` (always) or ``mkl`` (always
``F.linear``: bit-identical to the reference, and no packing).

Packed weights (CPU, float32 and bfloat16): oneDNN runs fastest against a weight in its own blocked
layout. ``F.linear`` in bfloat16 reorders the plain weight into that layout on every call (which
caps a streaming step at about 17 GB/s of weights on one core), and the float32 oneDNN product on a
plain weight reads it more slowly than a blocked one (bfloat16 packing needs AVX-512 or AVX-NE-
CONVERT, see :func:`bf16_packing_available`; elsewhere bfloat16 stays on ``F.linear``). A module
with ``pack`` on reorders its weight once, on its first call without gradients, and then keeps
**only** the packed copy: the parameter's storage is released (its shape, dtype and device stay
readable). One row: bfloat16 2.4x faster, float32 about 1.25x (1.4x at 4 rows); results equal the
unpacked product's up to float32 summation order. Reading ``module.weight``, ``state_dict()``,
``load_state_dict``, ``.to()`` and any call that needs gradients first restore the plain weight
(exactly: the packing is a reordering), so checkpoints and training see ordinary parameters; the
next inference call packs again.

:func:`set_cpu_kernels` sets the kernel and packing of every projection of a model; the loaders
call it with the defaults of ``DSM_CPU_MATMUL`` (``auto``/``onednn``/``mkl``) and ``DSM_CPU_PACK``
(``1``/``0``), read then. Packing switches itself off for the model (packed weights restored to
plain ones), with a warning, when a new pack would leave less than :data:`MIN_FREE_BYTES` (or an
eighth of the memory of the machine, or of its container's cgroup limit) available.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .host_memory import host_memory

_log = logging.getLogger(__name__)

__all__ = [
    "MATMUL_MODES",
    "MIN_FREE_BYTES",
    "MIN_SQUARE_DIM",
    "MIN_WEIGHT_ELEMENTS",
    "ONEDNN_AVAILABLE",
    "CpuKernels",
    "Linear",
    "StackedLinear",
    "bf16_packing_available",
    "block_starts_of",
    "blockwise",
    "cpu_kernels_from_env",
    "packed_weight_bytes",
    "projection_dtype",
    "replace_linears",
    "set_cpu_kernels",
]

# Smaller weights (Mimi's 512-wide transformer, heads) stay on MKL: the gain is small there and
# Mimi's codes come from an argmin that is best kept bit-identical to the reference.
MIN_WEIGHT_ELEMENTS = 1 << 21
# Square-ish weights from this size on also go to oneDNN (the depformer's 1024 x 1024 output
# projection: 1.5x faster at 4 rows); every Mimi weight has a 512-wide side and stays on MKL.
MIN_SQUARE_DIM = 1024
# A pack is only made while the memory still available afterwards stays above this many bytes
# and above an eighth of the total (the machine's or the container's, see
# :mod:`dsm.nn.host_memory`).
MIN_FREE_BYTES = 1 << 30
# Row count oneDNN picks the blocked layout for. Any value from 4 up gives float32 its fast layout
# for 1 to 1024 rows (1 gives the plain layout's speed); bfloat16 gets the same layout for all.
_PACK_ROWS = 16

MATMUL_MODES = ("auto", "onednn", "mkl")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _onednn_available() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    return hasattr(torch.ops.mkldnn, "_linear_pointwise")


ONEDNN_AVAILABLE = _onednn_available()


@functools.cache
def bf16_packing_available() -> bool:
    """Whether oneDNN can pack bfloat16 weights on this CPU (it needs AVX-512 BW/VL/DQ or
    AVX-NE-CONVERT; on AVX2-only CPUs bfloat16 projections stay on ``F.linear``). Probed once."""
    if not ONEDNN_AVAILABLE:
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16), 16)
    except RuntimeError:
        return False
    return True


def _check_mode(mode: str, what: str) -> str:
    if mode not in MATMUL_MODES:
        raise ValueError(f"{what} must be one of {', '.join(MATMUL_MODES)}, got {mode!r}")
    return mode


def cpu_kernels_from_env() -> tuple[str, bool]:
    """``(matmul, pack)`` from ``DSM_CPU_MATMUL`` (default ``auto``) and ``DSM_CPU_PACK``
    (default ``1``); a ``ValueError`` naming the variable for any other value."""
    mode = os.environ.get("DSM_CPU_MATMUL", "auto").strip().lower() or "auto"
    _check_mode(mode, "DSM_CPU_MATMUL")
    value = os.environ.get("DSM_CPU_PACK", "1").strip().lower() or "1"
    if value not in _TRUE + _FALSE:
        raise ValueError(f"DSM_CPU_PACK must be 1 (pack CPU weights, default) or 0, got {value!r}")
    return mode, value in _TRUE


def block_starts_of(out_features: int, blocks: Sequence[int] | None) -> tuple[int, ...]:
    """Start row of each row block, then ``out_features``; a ``ValueError`` unless the sizes
    are positive and sum to ``out_features``."""
    sizes = tuple(blocks) if blocks is not None else (out_features,)
    if sum(sizes) != out_features or min(sizes) <= 0:
        raise ValueError(f"row blocks {sizes} do not split {out_features} rows")
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + size)
    return tuple(starts)


def blockwise(
    product: Callable[[torch.Tensor, int], torch.Tensor],
    num_blocks: int,
    x: torch.Tensor,
    index: int | Sequence[int] | None,
) -> torch.Tensor:
    """The row-block dispatch of :meth:`Linear.forward`, shared by every projection module:
    ``product(x, block)`` multiplies ``x`` by one row block."""
    if index is None:
        if num_blocks == 1:
            return product(x, 0)
        return torch.cat([product(x, i) for i in range(num_blocks)], dim=-1)
    if isinstance(index, int):
        return product(x, index)
    if len(index) == 1:
        return product(x, index[0])
    return torch.cat([product(x[:, t : t + 1], i) for t, i in enumerate(index)], dim=1)


class CpuKernels:
    """The CPU kernel policy shared by the projections of one :func:`set_cpu_kernels` call.

    ``pack`` goes off for all of them at once when memory runs short (see :meth:`room_for`).
    """

    def __init__(self, matmul: str = "auto", pack: bool = False) -> None:
        self.matmul = _check_mode(matmul, "cpu matmul mode")
        self.pack = bool(pack)
        self.members: weakref.WeakSet[Linear] = weakref.WeakSet()

    def room_for(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more leave enough memory available (always True where unknown);
        when not, packing goes off for every member, packed weights restored, with a warning."""
        memory = host_memory()
        if memory is None or memory.available - nbytes >= max(MIN_FREE_BYTES, memory.total // 8):
            return True
        self.pack = False
        held = sum(m.packed_bytes() for m in self.members)
        for member in list(self.members):
            member.unpack_weight()
        _log.warning(
            "dsm: only %.1f GB of memory available: CPU weight packing is off for this model "
            "(%.1f GB of packed weights restored to plain ones; projections run slower). Set "
            "DSM_CPU_PACK=0 (or --no-pack-weights) to skip packing from the start.",
            memory.available / 1e9,
            held / 1e9,
        )
        return False


_DEFAULT_KERNELS = CpuKernels("auto", pack=False)


class Linear(nn.Linear):
    """``x [..., D_in] @ weight[D_out, D_in]^T (+ bias)``, with row blocks and CPU kernels.

    Args:
        in_features, out_features, bias, device, dtype: as ``torch.nn.Linear``.
        blocks: sizes of the row blocks of ``weight`` (summing to ``out_features``), selected by
            the ``index`` of :meth:`forward`; default one block.

    A new module multiplies with ``F.linear`` (float32 weights of the ``auto`` sizes go to
    oneDNN) and packs nothing; :func:`set_cpu_kernels` changes that.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        blocks: Sequence[int] | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.block_starts = block_starts_of(out_features, blocks)
        self.kernels = _DEFAULT_KERNELS
        # Packed weight per block while packed (the parameter's storage is released then).
        self._packs: list[torch.Tensor] | None = None

    # -- the product ------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, index: int | Sequence[int] | None = None) -> torch.Tensor:
        """``[..., D_in] -> [..., D_block]``.

        ``index``: None for the whole weight, an int for that row block, or one block per
        position of ``x [B, T, D_in]`` (``len(index) == T``; the depformer's schedule).
        """
        return blockwise(self._product, self.num_blocks, x, index)

    @property
    def num_blocks(self) -> int:
        """How many row blocks the weight has."""
        return len(self.block_starts) - 1

    @property
    def activation_dtype(self) -> torch.dtype:
        """dtype of the inputs and outputs: the weight's (see :func:`projection_dtype`)."""
        param = self._parameters["weight"]
        assert param is not None
        return param.dtype

    def _product(self, x: torch.Tensor, block: int) -> torch.Tensor:
        param = self._parameters["weight"]
        assert param is not None
        weight: torch.Tensor = param
        bias: torch.Tensor | None = self._parameters["bias"]
        start, end = self.block_starts[block], self.block_starts[block + 1]
        if bias is not None and self.num_blocks > 1:
            bias = bias[start:end]
        grad = torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)
        if self._packs is not None:
            if not grad and x.dtype == weight.dtype and x.device.type == "cpu":
                return torch.ops.mkldnn._linear_pointwise(
                    x, self._packs[block], bias, "none", [], ""
                )
            self.unpack_weight()
        elif not grad and self._should_pack(x, weight) and self._pack():
            return self._product(x, block)
        if self.num_blocks > 1:
            weight = weight[start:end]
        if not grad and self._use_onednn(x, weight):
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return F.linear(x, weight, bias)

    def _use_onednn(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        mode = self.kernels.matmul
        if mode == "mkl" or not ONEDNN_AVAILABLE:
            return False
        if x.device.type != "cpu" or weight.dtype != torch.float32 or x.dtype != torch.float32:
            return False
        if (
            mode == "auto"
            and weight.numel() < MIN_WEIGHT_ELEMENTS
            and min(weight.shape) < MIN_SQUARE_DIM
        ):
            return False
        return weight.is_contiguous()

    def _should_pack(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        """bfloat16 projections, and the float32 ones that go to oneDNN, multiply packed blocks."""
        if not self.kernels.pack or self.kernels.matmul == "mkl" or not ONEDNN_AVAILABLE:
            return False
        if x.device.type != "cpu" or x.dtype != weight.dtype or weight.is_inference():
            # (an inference tensor's storage cannot be swapped for the packed copy)
            return False
        if weight.dtype == torch.float32:
            return self._use_onednn(x, weight)
        return (
            weight.dtype == torch.bfloat16 and weight.is_contiguous() and bf16_packing_available()
        )

    # -- packing ------------------------------------------------------------------------------

    def _pack(self) -> bool:
        """Replace the plain weight by its packed blocks; False (nothing done) when memory is
        short."""
        weight = self._parameters["weight"]
        assert weight is not None
        if not self.kernels.room_for(weight.numel() * weight.element_size()):
            return False
        plain = weight.detach()
        self._packs = [
            torch.ops.mkldnn._reorder_linear_weight(plain[s:e].contiguous(), _PACK_ROWS)
            for s, e in zip(self.block_starts, self.block_starts[1:], strict=False)
        ]
        # Keep the parameter (shape, dtype, device, requires_grad) with no storage behind it.
        weight.data = torch.empty((), dtype=weight.dtype, device=weight.device).expand(weight.shape)
        return True

    def unpack_weight(self) -> None:
        """Restore the plain weight from the packed blocks (no-op when not packed)."""
        packs = self.__dict__.get("_packs")
        if packs is None:
            return
        weight = self._parameters["weight"]
        assert weight is not None
        self._packs = None
        weight.data = torch.cat([p.to_dense() for p in packs], dim=0)

    def packed_bytes(self) -> int:
        """Bytes held in packed blocks (0 while plain)."""
        if self._packs is None:
            return 0
        return sum(p.numel() * p.element_size() for p in self._packs)

    def __getattr__(self, name: str) -> Any:
        if name == "weight":
            self.unpack_weight()  # whoever reads the weight gets the plain one
        return super().__getattr__(name)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Linear:
        self.unpack_weight()
        return super()._apply(fn, recurse)

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        self.unpack_weight()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.unpack_weight()
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        blocks = "" if self.num_blocks == 1 else f", blocks={self.num_blocks}"
        return super().extra_repr() + blocks


class StackedLinear(Linear):
    """``mult`` bias-free linears ``D_in -> D_out`` in one ``weight [mult * D_out, D_in]``: the
    depformer's per-step weight sets; ``forward(x, weight_index)`` picks them per position."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        mult: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_features,
            mult * out_features,
            bias=False,
            device=device,
            dtype=dtype,
            blocks=[out_features] * mult,
        )
        self.mult = mult


def set_cpu_kernels(
    model: nn.Module, matmul: str | None = None, pack: bool | None = None
) -> CpuKernels:
    """Set the CPU kernel of every :class:`Linear` in ``model`` (see the module docstring).

    Args:
        matmul: ``auto``, ``onednn`` or ``mkl``; None for ``DSM_CPU_MATMUL`` (default auto).
        pack: keep packed weights (one copy each) for the oneDNN products; None for
            ``DSM_CPU_PACK`` (default on). Turning it off restores the plain weights.

    Returns the policy object now shared by those modules.
    """
    env_mode, env_pack = cpu_kernels_from_env() if matmul is None or pack is None else ("", True)
    kernels = CpuKernels(env_mode if matmul is None else matmul, env_pack if pack is None else pack)
    for module in model.modules():
        if isinstance(module, Linear):
            module.unpack_weight()
            module.kernels = kernels
            kernels.members.add(module)
    return kernels


def projection_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and activation dtype of the first projection in ``module``: what its inputs and
    KV caches use. A projection module (a :class:`Linear`, or a replacement such as
    :class:`dsm.nn.quantized.QuantizedLinear`) declares ``activation_dtype``."""
    for sub in module.modules():
        dtype = getattr(sub, "activation_dtype", None)
        if isinstance(dtype, torch.dtype):
            tensors = [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]
            return tensors[0].device, dtype
    param = next(module.parameters())
    return param.device, param.dtype


def packed_weight_bytes(model: nn.Module) -> int:
    """Bytes of weights held packed in ``model`` (those weights have no plain copy)."""
    return sum(m.packed_bytes() for m in model.modules() if isinstance(m, Linear))


def replace_linears(model: nn.Module, factory: Callable[[Linear], nn.Module]) -> nn.Module:
    """Replace every :class:`Linear` of ``model`` by ``factory(linear)``, in place.

    The one supported way to change how projections compute (LoRA, quantized weights): the
    replacement is called exactly as the projection was, ``module(x)`` or ``module(x, index)``
    (see :meth:`Linear.forward`), by streaming inference, the teacher-forced forward and
    training alike. Returns ``model``.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Linear):
                setattr(parent, name, factory(child))
    return model
