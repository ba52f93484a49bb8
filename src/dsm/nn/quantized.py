"""Weight-only quantized projections: int8 per output channel, int4 group-wise.

:class:`QuantizedLinear` replaces a :class:`~dsm.nn.Linear` (through
:func:`~dsm.nn.replace_linears`, so streaming, batched slots, the depformer's per-step row
blocks and the teacher-forced forward all call it unchanged) and keeps its row blocks.

Stored form (the buffers, also the tensors of a quantized checkpoint):

* ``int8``: ``qweight`` int8 ``[N, K]``, ``scale`` bfloat16 ``[N]``; ``w = qweight * scale``
  (symmetric, ``scale = max|w_row| / 127``).
* ``int4``: ``qweight`` uint8 ``[N, K / 2]`` (column ``2j`` in the low nibble, ``2j + 1`` in the
  high one), ``scale`` and ``zero`` bfloat16 ``[N, K / group]``; ``w = (q - 8) * scale + zero``
  with ``q`` in 0..15 (asymmetric: ``scale = (max - min) / 15``, ``zero = min + 8 * scale``
  per group of ``group`` columns).

Scales are rounded to bfloat16 *before* the weights are quantized, so the stored numbers are
exactly those the kernels multiply with.

Kernels (chosen by measurement, see the README's quantization section): on CPU, int8 products
of at most :data:`NATIVE_MAX_ROWS` rows use dsm's own AVX2 kernel (:mod:`dsm.nn.native`,
float32 activations) where it is available; otherwise PyTorch's own
``torch._weight_int8pack_mm`` and ``torch._weight_int4pack_mm_for_cpu``. Both are fast only with
bfloat16 activations (one row x ``[8448, 2048]``, 2 threads: int8 0.4 ms and int4 0.25 ms with
bfloat16, 30 to 80 ms with float32, float32 ``F.linear`` 3.3 ms), so the module casts its input
to bfloat16 and its output back. int4 weights are reordered into the kernel's layout on the first
call without gradients (``_convert_weight_to_int4pack_for_cpu``), keeping only that copy;
``state_dict()`` and ``.to()`` recover the stored nibbles from it exactly (by multiplying an
identity with unit scales). Blocks whose shape a kernel does not take (int4: rows not a multiple
of 16; int8: input width not a multiple of 16) and other devices multiply by the dequantized
weight in the input's dtype.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dsm.errors import ConfigError

from .linear import Linear, block_starts_of, blockwise, replace_linears
from .native import NativeKernels
from .native import kernels as native_kernels

__all__ = [
    "DEFAULT_GROUP_SIZE",
    "INT4_GROUP_SIZES",
    "QUANT_MODES",
    "QuantizedLinear",
    "check_quantize_mode",
    "dequantize_int4",
    "dequantize_int8",
    "pack_model",
    "quantize_int4",
    "quantize_int8",
    "quantize_model",
    "quantized_mode",
]

QUANT_MODES = ("int8", "int4")
# Group sizes the CPU int4 kernel takes. All run at the same speed on this path; 32 gives the
# smallest error (stt-1b width: logits 0.28 vs 0.32 at 64, 0.36 at 128; see the README) for
# half a bit per weight more than 64.
INT4_GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 32
_COMPUTE = torch.bfloat16
_INT4_ROW_MULTIPLE = 16
# Up to this many activation rows dsm's native int8 kernel (:mod:`dsm.nn.native`, weight-bound
# products) runs where available; more rows go to PyTorch's kernel, which blocks for reuse.
NATIVE_MAX_ROWS = 8
# torch._weight_int8pack_mm reads past the row for other widths (wrong results, or a crash).
_INT8_COL_MULTIPLE = 16


def check_quantize_mode(mode: str | None) -> str | None:
    """``mode`` if it is None or one of :data:`QUANT_MODES`; else a
    :class:`~dsm.errors.ConfigError` (a ``ValueError``) naming them."""
    if mode is None or mode in QUANT_MODES:
        return mode
    raise ConfigError(
        f"unknown quantization {mode!r}: supported are {', '.join(QUANT_MODES)} "
        "(or none for float weights)"
    )


def check_group_size(group_size: int) -> int:
    """``group_size`` if the int4 kernel takes it; else a ``ConfigError`` naming those it does."""
    if group_size not in INT4_GROUP_SIZES:
        sizes = ", ".join(map(str, INT4_GROUP_SIZES))
        raise ConfigError(f"int4 group size must be one of {sizes}, got {group_size}")
    return group_size


# -- the arithmetic ---------------------------------------------------------------------------


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(qweight int8 [N, K], scale bfloat16 [N])`` with ``weight ~= qweight * scale``."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.bfloat16)
    q = torch.round(w / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 ``[N, K]`` weight of an int8 pair."""
    return qweight.float() * scale.float()[:, None]


def quantize_int4(
    weight: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(qweight uint8 [N, K/2], scale, zero bfloat16 [N, K/group])`` (see module docstring)."""
    N, K = weight.shape
    if K % group_size:
        raise ValueError(f"int4: {K} input features are not a multiple of group {group_size}")
    w = weight.detach().float().reshape(N, K // group_size, group_size)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((high - low) / 15).clamp(min=1e-12).to(torch.bfloat16)
    zero = (low + 8 * scale.float()).to(torch.bfloat16)
    q = torch.round((w - zero.float()[..., None]) / scale.float()[..., None] + 8)
    q = q.clamp_(0, 15).to(torch.uint8).reshape(N, K)
    return q[:, 0::2] | (q[:, 1::2] << 4), scale, zero


def unpack_nibbles(qweight: torch.Tensor) -> torch.Tensor:
    """int32 ``[N, K]`` values 0..15 of a ``[N, K/2]`` nibble tensor."""
    low, high = qweight & 15, qweight >> 4
    return torch.stack([low, high], dim=-1).reshape(qweight.shape[0], -1).to(torch.int32)


def dequantize_int4(qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """float32 ``[N, K]`` weight of an int4 triple."""
    q = unpack_nibbles(qweight).float()
    N, K = q.shape
    groups = scale.shape[1]
    q = q.reshape(N, groups, K // groups) - 8
    return (q * scale.float()[..., None] + zero.float()[..., None]).reshape(N, K)


def _int4_pack_cpu(
    qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    packed = torch._convert_weight_to_int4pack_for_cpu(unpack_nibbles(qweight), 1)
    scales_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
    return packed, scales_zeros


def _int4_unpack_cpu(packed: torch.Tensor, rows: int, cols: int, group: int) -> torch.Tensor:
    """The ``[rows, cols / 2]`` nibbles of a CPU-packed int4 weight, exactly: the kernel with
    unit scales and zero 8 maps an identity to the integers themselves."""
    ones = torch.ones(cols // group, rows, dtype=_COMPUTE)
    unit = torch.stack([ones, ones * 8], dim=-1)
    parts = []
    for start in range(0, cols, 512):
        eye = torch.eye(cols, dtype=_COMPUTE)[start : start + 512]
        parts.append(torch._weight_int4pack_mm_for_cpu(eye, packed, group, unit))
    q = torch.cat(parts, dim=0).t().round().to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


# -- the module -------------------------------------------------------------------------------


class QuantizedLinear(nn.Module):
    """A projection with weight-only int8 or int4 weights (see the module docstring).

    Build one with :meth:`from_linear` (quantizes a float :class:`~dsm.nn.Linear`) or empty
    (``device="meta"`` then ``load_state_dict(..., assign=True)``) for a quantized checkpoint.
    Called like the projection it replaces: ``module(x)`` or ``module(x, index)``.
    """

    qweight: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        mode: str,
        *,
        group_size: int = DEFAULT_GROUP_SIZE,
        bias: bool = False,
        blocks: Sequence[int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        # The model's float dtype: inputs and outputs (the kernels run in bfloat16 inside).
        self.activation_dtype = dtype
        if check_quantize_mode(mode) is None:
            raise ValueError("QuantizedLinear needs a mode")
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.block_starts = block_starts_of(out_features, blocks)
        self.group_size = check_group_size(group_size) if mode == "int4" else 0
        N, K = out_features, in_features
        if mode == "int8":
            self.register_buffer("qweight", torch.empty(N, K, dtype=torch.int8, device=device))
            self.register_buffer("scale", torch.empty(N, dtype=torch.bfloat16, device=device))
        else:
            if K % group_size or K % 2:
                raise ValueError(f"int4: {K} input features are not a multiple of {group_size}")
            groups = K // group_size
            self.register_buffer(
                "qweight", torch.empty(N, K // 2, dtype=torch.uint8, device=device)
            )
            self.register_buffer(
                "scale", torch.empty(N, groups, dtype=torch.bfloat16, device=device)
            )
            self.register_buffer(
                "zero", torch.empty(N, groups, dtype=torch.bfloat16, device=device)
            )
        self.bias: nn.Parameter | None = None
        if bias:
            empty = torch.empty(N, dtype=dtype, device=device)
            self.bias = nn.Parameter(empty, requires_grad=False)
        # int4 on CPU: (packed weight, scales_zeros) per block, while packed.
        self._packs: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        # Whether the int4 kernel takes every row block (else the dequantized product is used).
        self._kernel_rows = not any(
            (end - start) % _INT4_ROW_MULTIPLE for start, end in self._block_ranges()
        )

    @classmethod
    def from_linear(
        cls, linear: Linear, mode: str, group_size: int = DEFAULT_GROUP_SIZE
    ) -> QuantizedLinear:
        """Quantize ``linear`` (its row blocks kept; the bias stays in its float dtype)."""
        weight = linear.weight.detach()
        module = cls.empty_like(linear, mode, group_size, weight.device)
        if mode == "int8":
            module.qweight, module.scale = quantize_int8(weight)
        else:
            module.qweight, module.scale, module.zero = quantize_int4(weight, group_size)
        if linear.bias is not None and module.bias is not None:
            module.bias.data = linear.bias.detach().clone()
        return module

    @classmethod
    def empty_like(
        cls,
        linear: Linear,
        mode: str,
        group_size: int = DEFAULT_GROUP_SIZE,
        device: torch.device | str | None = None,
    ) -> QuantizedLinear:
        """An uninitialised module of ``linear``'s shape, row blocks, bias and float dtype."""
        starts = linear.block_starts
        return cls(
            linear.in_features,
            linear.out_features,
            mode,
            group_size=group_size,
            bias=linear.bias is not None,
            blocks=[end - start for start, end in itertools.pairwise(starts)],
            device=device,
            dtype=linear.activation_dtype,
        )

    @property
    def num_blocks(self) -> int:
        """How many row blocks the weight has."""
        return len(self.block_starts) - 1

    def dequantize(self) -> torch.Tensor:
        """The float32 ``[N, K]`` weight the stored integers and scales stand for."""
        self.unpack_weight()
        if self.mode == "int8":
            return dequantize_int8(self.qweight, self.scale)
        return dequantize_int4(self.qweight, self.scale, self.zero)

    def forward(self, x: torch.Tensor, index: int | Sequence[int] | None = None) -> torch.Tensor:
        """``[..., D_in] -> [..., D_block]``, ``index`` as for :meth:`dsm.nn.Linear.forward`."""
        return blockwise(self._product, self.num_blocks, x, index)

    def _product(self, x: torch.Tensor, block: int) -> torch.Tensor:
        start, end = self.block_starts[block], self.block_starts[block + 1]
        bias = self.bias[start:end] if self.bias is not None else None
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        kernel = x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad)
        out = self._cpu_kernel(rows, block) if kernel else None
        if out is None:
            out = F.linear(rows, self._dequantized_block(start, end, x.dtype))
        out = out.to(x.dtype)
        if bias is not None:
            out = out + bias.to(x.dtype)
        return out.reshape(*lead, end - start)

    def native_int8(self, rows: int) -> NativeKernels | None:
        """dsm's native kernel if it computes this module's products of ``rows`` rows (int8,
        CPU, at most :data:`NATIVE_MAX_ROWS` rows, the kernel built here), else None. The one
        rule for :meth:`forward` and for products bound ahead of time (the depformer frame)."""
        if self.mode != "int8" or rows > NATIVE_MAX_ROWS or self.qweight.device.type != "cpu":
            return None
        return native_kernels()

    def _cpu_kernel(self, rows: torch.Tensor, block: int) -> torch.Tensor | None:
        start, end = self.block_starts[block], self.block_starts[block + 1]
        if (native := self.native_int8(rows.shape[0])) is not None:
            x = rows.to(torch.float32).contiguous()  # float32 activations, no bfloat16 rounding
            return native.int8(x, self.qweight[start:end], self.scale[start:end])
        rows = rows.to(_COMPUTE).contiguous()  # the kernels read dense rows
        if self.mode == "int8":
            if self.in_features % _INT8_COL_MULTIPLE:
                return None
            return torch._weight_int8pack_mm(rows, self.qweight[start:end], self.scale[start:end])
        if self._packs is None and not self.pack():
            return None
        assert self._packs is not None
        packed, scales_zeros = self._packs[block]
        return torch._weight_int4pack_mm_for_cpu(rows, packed, self.group_size, scales_zeros)

    def _dequantized_block(self, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
        self.unpack_weight()
        if self.mode == "int8":
            q, s = self.qweight[start:end], self.scale[start:end]
            return (q.to(dtype) * s.to(dtype)[:, None]).to(dtype)
        q = unpack_nibbles(self.qweight[start:end]).to(dtype)
        n, k = q.shape
        g = self.group_size
        s = self.scale[start:end].to(dtype)[..., None]
        z = self.zero[start:end].to(dtype)[..., None]
        return ((q.reshape(n, k // g, g) - 8) * s + z).reshape(n, k)

    # -- int4 packing (CPU) -------------------------------------------------------------------

    def _block_ranges(self) -> list[tuple[int, int]]:
        return list(itertools.pairwise(self.block_starts))

    def pack(self) -> bool:
        """Reorder an int4 weight into the CPU kernel's layout now rather than on the first
        call (loaders do it so the stored nibbles are freed at load). True when packed."""
        if self._packs is not None:
            return True
        if self.mode != "int4" or self.qweight.device.type != "cpu" or not self._kernel_rows:
            return False
        self._pack()
        return True

    def _pack(self) -> None:
        self._packs = [
            _int4_pack_cpu(self.qweight[s:e], self.scale[s:e], self.zero[s:e])
            for s, e in self._block_ranges()
        ]
        # Keep the buffers (shape, dtype) with no storage: the packed copies are the only ones.
        for name in ("qweight", "scale", "zero"):
            t = getattr(self, name)
            setattr(self, name, torch.empty((), dtype=t.dtype, device=t.device).expand(t.shape))

    def unpack_weight(self) -> None:
        """Restore the stored nibbles and scales from the packed int4 blocks (no-op when not
        packed)."""
        packs = self.__dict__.get("_packs")
        if packs is None:
            return
        self._packs = None
        K = self.in_features
        blocks = list(zip(packs, self._block_ranges(), strict=True))
        self.qweight = torch.cat(
            [_int4_unpack_cpu(p, e - s, K, self.group_size) for (p, _), (s, e) in blocks], dim=0
        )
        # scales_zeros is [groups, rows, 2]: the stacked scale and zero, transposed.
        self.scale = torch.cat([sz[..., 0].t() for _, sz in packs], dim=0).contiguous()
        self.zero = torch.cat([sz[..., 1].t() for _, sz in packs], dim=0).contiguous()

    def packed_bytes(self) -> int:
        """Bytes held in packed int4 blocks and their scales (0 while plain)."""
        if self._packs is None:
            return 0
        return sum(t.numel() * t.element_size() for pair in self._packs for t in pair)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> QuantizedLinear:
        self.unpack_weight()
        super()._apply(fn, recurse)
        # ``.to(dtype)`` changes the activations' dtype; scales stay what the kernels take.
        self.activation_dtype = fn(torch.empty(0, dtype=self.activation_dtype)).dtype
        self.scale = self.scale.to(torch.bfloat16)
        if self.mode == "int4":
            self.zero = self.zero.to(torch.bfloat16)
        return self

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        self.unpack_weight()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.unpack_weight()  # real buffers to load into (or to be replaced, with assign)
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.mode == "int4" else ""
        blocks = "" if self.num_blocks == 1 else f", blocks={self.num_blocks}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"mode={self.mode}{group}, bias={self.bias is not None}{blocks}"
        )


# -- whole models -----------------------------------------------------------------------------


def pack_model(model: nn.Module) -> int:
    """Pack every int4 projection of ``model`` on CPU for the kernel now
    (:meth:`QuantizedLinear.pack`); returns how many were packed."""
    return sum(1 for m in model.modules() if isinstance(m, QuantizedLinear) and m.pack())


def quantized_mode(model: nn.Module) -> str | None:
    """The mode of the quantized projections of ``model`` (None when it has none)."""
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            return module.mode
    return None


def quantize_model(
    model: nn.Module,
    mode: str,
    *,
    group_size: int = DEFAULT_GROUP_SIZE,
    skip: Sequence[str] = (),
    device: torch.device | str | None = None,
) -> nn.Module:
    """Replace every :class:`~dsm.nn.Linear` of ``model`` by a :class:`QuantizedLinear`.

    Args:
        mode: ``int8`` (per output channel) or ``int4`` (group-wise).
        group_size: int4 group (one of :data:`INT4_GROUP_SIZES`); a projection whose input
            width is not a multiple of it uses the largest supported group that divides it, and
            stays float if none does.
        skip: name prefixes of submodules left float (the LM's float32 conditioners).
        device: build empty modules there instead (``"meta"``: to load a quantized
            checkpoint with ``load_state_dict(..., assign=True)``).

    Raises :class:`~dsm.errors.ConfigError` (a ``ValueError``) for an unknown mode or group,
    or a model already quantized.
    """
    if check_quantize_mode(mode) is None:
        raise ConfigError("quantize_model needs a mode: " + ", ".join(QUANT_MODES))
    if mode == "int4":
        check_group_size(group_size)
    if quantized_mode(model) is not None:
        raise ConfigError(f"this model is already quantized ({quantized_mode(model)})")
    skipped = {
        id(m)
        for name, m in model.named_modules()
        if any(name == p or name.startswith(p + ".") for p in skip)
    }

    def factory(linear: Linear) -> nn.Module:
        if id(linear) in skipped:
            return linear
        group = group_size
        if mode == "int4":
            fits = [g for g in INT4_GROUP_SIZES if g <= group_size and linear.in_features % g == 0]
            if not fits:
                return linear
            group = max(fits)
        if device is None:
            return QuantizedLinear.from_linear(linear, mode, group)
        return QuantizedLinear.empty_like(linear, mode, group, device)

    return replace_linears(model, factory)
