"""Normalisations and LayerScale of the transformers (model-spec §2.2).

``make_norm(kind, dim)`` builds the norm named by a checkpoint config:

* ``layer_norm``: ``nn.LayerNorm`` with eps 1e-5 (params ``weight``/``bias``);
* ``layer_norm_f32``: the same computed in float32, eps 1e-8 (as the reference);
* ``rms_norm``: RMS norm, eps 1e-5, computed in the activation dtype (param ``alpha [1, 1, D]``);
* ``rms_norm_f32``: RMS norm, eps 1e-8, computed in float32 (param ``alpha [1, 1, D]``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["NORM_KINDS", "LayerNormF32", "LayerScale", "RMSNorm", "make_norm"]

NORM_KINDS = ("layer_norm", "layer_norm_f32", "rms_norm", "rms_norm_f32")


class LayerNormF32(nn.LayerNorm):
    """LayerNorm whose math runs in float32 whatever the activation dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` -> ``[..., D]`` in the dtype of ``x``."""
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        y = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return y.to(x.dtype)


class RMSNorm(nn.Module):
    """``y = x * alpha * rsqrt(mean(x^2) + eps)``, optionally computed in ``compute_dtype``."""

    def __init__(self, dim: int, eps: float = 1e-5, compute_dtype: torch.dtype | None = None):
        super().__init__()
        self.eps = eps
        self.compute_dtype = compute_dtype
        self.alpha = nn.Parameter(torch.ones(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` -> ``[B, T, D]`` in the dtype of ``x``."""
        x_dtype = x.dtype
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)
        var = torch.mean(x.square(), dim=-1, keepdim=True) + self.eps
        # alpha * rsqrt(var) first, then x: the reference's association order.
        return (x * (self.alpha.to(var.dtype) * torch.rsqrt(var))).to(x_dtype)

    def extra_repr(self) -> str:
        return f"dim={self.alpha.shape[-1]}, eps={self.eps}, compute_dtype={self.compute_dtype}"


class LayerScale(nn.Module):
    """Per-channel scaling of a residual update: ``scale * x`` with ``scale [D]``."""

    def __init__(self, dim: int, init: float = 1e-4) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` -> ``[..., D]``."""
        return self.scale * x


def make_norm(kind: str, dim: int) -> nn.Module:
    """Build the norm called ``kind`` (one of :data:`NORM_KINDS`) over the last dim ``dim``."""
    if kind == "layer_norm":
        return nn.LayerNorm(dim, eps=1e-5)
    if kind == "layer_norm_f32":
        return LayerNormF32(dim, eps=1e-8)
    if kind == "rms_norm":
        return RMSNorm(dim, eps=1e-5)
    if kind == "rms_norm_f32":
        return RMSNorm(dim, eps=1e-8, compute_dtype=torch.float32)
    raise ValueError(f"unknown norm {kind!r}; expected one of {', '.join(NORM_KINDS)}")
