"""A LoRA projection: a frozen :class:`~dsm.nn.linear.Linear` plus a trainable low-rank update.

``y = base(x) + scaling * B(A(x))`` with ``A: D_in -> r`` and ``B: r -> D_out`` bias-free,
``B`` initialised to zero (so a fresh adapter changes nothing) and ``A`` as ``nn.Linear``
initialises its weight (Kaiming-uniform). The parameter names ``lora_A.weight`` and
``lora_B.weight`` and the rule ``W + scaling * B @ A`` are the reference's
(``moshi/modules/lora.py``). It is swapped in with :func:`~dsm.nn.linear.replace_linears` and
called exactly as the projection it wraps (``module(x)`` or ``module(x, index)`` with row blocks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .linear import Linear, blockwise

__all__ = ["LoRALinear"]


class LoRALinear(nn.Module):
    """``base`` (frozen) plus ``scaling * lora_B(lora_A(x))``; see the module docstring."""

    def __init__(self, base: Linear, rank: int, scaling: float) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        weight = base.weight
        self.base = base
        self.rank = rank
        self.scaling = scaling
        kw = {"device": weight.device, "dtype": weight.dtype}
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, **kw)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, **kw)
        nn.init.zeros_(self.lora_B.weight)
        base.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta(self) -> torch.Tensor:
        """The weight update ``scaling * B @ A`` ``[D_out, D_in]``."""
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)

    def forward(self, x: torch.Tensor, index: int | Sequence[int] | None = None) -> torch.Tensor:
        """As :meth:`Linear.forward`: ``index`` selects the base's row blocks."""
        y = self.base(x, index)
        low = self.lora_A(x.to(self.lora_A.weight.dtype))
        update = blockwise(self._block_update, self.base.num_blocks, low, index)
        return y + (self.scaling * update).to(y.dtype)

    def _block_update(self, low: torch.Tensor, block: int) -> torch.Tensor:
        start, end = self.base.block_starts[block], self.base.block_starts[block + 1]
        return nn.functional.linear(low, self.lora_B.weight[start:end])

    @torch.no_grad()
    def merged(self) -> Linear:
        """The base projection with the update added to its weight (the adapter removed)."""
        self.base.weight.add_(self.delta().to(self.base.weight.dtype))
        return self.base

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling}"
