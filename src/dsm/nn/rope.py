"""Rotary positional embedding, interleaved-pairs convention (model-spec §2.2).

The pair ``(x[2i], x[2i+1])`` of every head is rotated as a complex number by the angle
``pos * f_i`` with ``f_i = max_period ** (-2i / D)``. All the math runs in float32 and the result
is cast back to the input dtype, as in the reference.

The rotation (cos, sin) depends only on positions, so a transformer computes it once per call
with :meth:`RotaryEmbedding.rotation` and every layer applies it with :func:`apply_rope`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["RotaryEmbedding", "apply_rope"]


class RotaryEmbedding(nn.Module):
    """Interleaved RoPE for heads of size ``head_dim`` with base ``max_period``.

    Holds no parameters or buffers (so ``module.to(dtype)`` cannot degrade the float32
    frequencies); the inverse frequencies are computed once per device and cached.
    """

    def __init__(self, head_dim: int, max_period: float = 10_000.0) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
        self.head_dim = head_dim
        self.max_period = float(max_period)
        self._inv_freq: dict[torch.device, torch.Tensor] = {}

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        """``[D/2]`` float32 frequencies ``exp(-i * 2 ln(max_period) / D)``."""
        freqs = self._inv_freq.get(device)
        if freqs is None:
            D = self.head_dim
            ds = torch.arange(D // 2, device=device, dtype=torch.float32)
            # Same expression as the reference so the frequencies are bit-identical.
            freqs = torch.exp(ds * (-math.log(self.max_period) * 2 / D))
            self._inv_freq[device] = freqs
        return freqs

    def rotation(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(cos, sin)``, each ``[B, T, D/2]`` float32, for integer ``positions [B, T]``."""
        angles = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq(positions.device)
        return torch.cos(angles), torch.sin(angles)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_period={self.max_period}"


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, T, *heads, D]`` by ``cos``/``sin`` ``[B or 1, T, D/2]``; same dtype out.

    Any number of head-like dims may sit between T and D (e.g. ``[B, T, 2, H, D]`` to rotate
    queries and keys in one call).
    """
    D = x.shape[-1]
    extra = x.dim() - 3
    shape = (cos.shape[0], cos.shape[1]) + (1,) * extra + (D // 2,)
    c = cos.view(shape)
    s = sin.view(shape)
    pairs = x.unflatten(-1, (D // 2, 2))
    xr = pairs[..., 0].float()
    xi = pairs[..., 1].float()
    out_r = xr * c - xi * s
    out_i = xr * s + xi * c
    return torch.stack([out_r.to(x.dtype), out_i.to(x.dtype)], dim=-1).flatten(-2)
