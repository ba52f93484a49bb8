"""Gated feed-forward block (``ActivationGating`` in the checkpoints, model-spec §2.2).

``linear_in`` maps ``D -> 2h``; its output is read as ``[..., 2, h]`` and the block returns
``linear_out(act(first) * second)``. No biases. The hidden size ``h`` follows the reference rule:
``21 * D // 8`` when ``dim_feedforward == 4 * D``, else ``2 * dim_feedforward // 3``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .linear import Linear

__all__ = ["ACTIVATIONS", "ActivationGating", "gated_hidden_dim", "get_activation"]

Activation = Callable[[torch.Tensor], torch.Tensor]

ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "gelu": F.gelu,
    "silu": F.silu,
    "mish": F.mish,
    "softsign": F.softsign,
    "identity": lambda x: x,
}


def get_activation(name: str) -> Activation:
    """The activation function called ``name`` in a checkpoint config (``gating`` key)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}"
        ) from None


def gated_hidden_dim(dim: int, dim_feedforward: int) -> int:
    """Hidden size ``h`` of a gated FFN (e.g. 5632 for D=2048, dim_feedforward=8448)."""
    if dim_feedforward == 4 * dim:
        return (21 * dim) // 8
    return (2 * dim_feedforward) // 3


class ActivationGating(nn.Module):
    """Gated FFN ``[B, T, D] -> [B, T, D]`` with params ``linear_in`` / ``linear_out``."""

    def __init__(self, dim: int, dim_feedforward: int, activation: str = "silu") -> None:
        super().__init__()
        hidden = gated_hidden_dim(dim, dim_feedforward)
        self.hidden = hidden
        self.activation_name = activation
        self.activation = get_activation(activation)
        self.linear_in = Linear(dim, 2 * hidden, bias=False)
        self.linear_out = Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` -> ``[..., D]``."""
        h = self.linear_in(x).unflatten(-1, (2, self.hidden))
        return self.linear_out(self.activation(h[..., 0, :]) * h[..., 1, :])

    def extra_repr(self) -> str:
        return f"activation={self.activation_name}"
