"""Token embeddings of the DSM language model (model-spec §2.1).

Every stream of the LM is embedded by a :class:`TokenEmbedding`: a plain lookup table (there
is no scaling at inference, whatever the reference's class name suggests), with three options
that the published checkpoints use:

* **zero token** ``-1`` (:data:`ZERO_TOKEN_ID`): the embedding is exactly 0 ("no input");
* **low rank** (depformer tables): the table has ``rank`` columns and a bias-free
  ``low_rank`` Linear ``rank -> dim`` follows; the zeroing happens before it, so the output of a
  zero token stays exactly 0;
* **demux** (TTS text): a token encodes a pair ``(second + 1) * num_embeddings + main`` and the
  embedding is ``out1(E[main]) + out2(E[second])`` (the second term is dropped when
  ``second == -1``), with one shared table ``E``. In this mode ``low_rank`` exists in the
  checkpoint but is never applied (a reference quirk kept for strict loading).

Parameter names match the checkpoint keys: ``weight``, ``low_rank.weight``, ``out1.weight``,
``out2.weight`` and, with ``norm_emb``, ``norm.weight`` / ``norm.bias``.

A quantized LM stores each table as int8 rows with one bfloat16 scale per row
(:meth:`TokenEmbedding.quantize_table`, the int8 arithmetic of :mod:`dsm.nn.quantized`): the
buffers ``qweight`` ``[V, D]`` and ``scale`` ``[V]`` replace ``weight``, and a lookup
dequantizes only the rows it reads. The tables are a large part of a quantized LM (stt-1b: 33
tables of 2049 x 2048, 0.60 GB in float32, 0.15 GB in int8).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dsm.nn.linear import Linear
from dsm.nn.quantized import quantize_int8

__all__ = ["ZERO_TOKEN_ID", "TokenEmbedding", "demux_tokens", "mux_tokens", "sinusoidal_embedding"]

# Token id whose embedding is exactly zero: "no input on this stream at this step".
ZERO_TOKEN_ID = -1


def mux_tokens(main: torch.Tensor, second: torch.Tensor, num_embeddings: int) -> torch.Tensor:
    """Multiplex two text streams into one id: ``(second + 1) * num_embeddings + main``.

    ``second == -1`` means "no second token". ``num_embeddings`` is ``text_card + 1``.
    """
    return (second + 1) * num_embeddings + main


def demux_tokens(tokens: torch.Tensor, num_embeddings: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`mux_tokens` for non-negative ids: ``(main, second)``, second may be -1."""
    return tokens % num_embeddings, tokens // num_embeddings - 1


class TokenEmbedding(nn.Module):
    """Embedding table of one stream, ``[...]`` long ids -> ``[..., dim]``.

    Args:
        num_embeddings: rows of the table (``card + 1`` or ``text_card + 1``: the last row is
            the stream's initial token).
        dim: output width.
        low_rank: if set, the table has ``low_rank`` columns followed by ``low_rank`` Linear.
        demux: tokens are multiplexed pairs (see the module docstring).
        norm: LayerNorm (eps 1e-5) right after the lookup (``norm_emb``, unused by DSM models).
    """

    qweight: torch.Tensor | None
    scale: torch.Tensor | None

    def __init__(
        self,
        num_embeddings: int,
        dim: int,
        *,
        low_rank: int | None = None,
        demux: bool = False,
        norm: bool = False,
    ) -> None:
        super().__init__()
        if demux and norm:
            raise ValueError("a demultiplexing embedding cannot have norm_emb")
        self.num_embeddings = num_embeddings
        self.dim = dim
        self.demux = demux
        table_dim = low_rank or dim
        self.weight: nn.Parameter | None = nn.Parameter(torch.empty(num_embeddings, table_dim))
        nn.init.normal_(self.weight, std=table_dim**-0.5)
        # int8 table (quantize_table): rows, one scale per row, and the float dtype of lookups.
        self.register_buffer("qweight", None)
        self.register_buffer("scale", None)
        self.activation_dtype = torch.float32
        self.norm: nn.LayerNorm | None = nn.LayerNorm(table_dim, eps=1e-5) if norm else None
        self.low_rank: Linear | None = None
        if low_rank is not None:
            self.low_rank = Linear(low_rank, dim, bias=False)
        self.out1: Linear | None = None
        self.out2: Linear | None = None
        if demux:
            self.out1 = Linear(table_dim, dim, bias=False)
            self.out2 = Linear(table_dim, dim, bias=False)

    @property
    def quantized(self) -> bool:
        """Whether the table is stored as int8 rows (:meth:`quantize_table`)."""
        return self.qweight is not None

    @property
    def table_dtype(self) -> torch.dtype:
        """The float dtype of looked-up rows (the model's dtype)."""
        return self.activation_dtype if self.weight is None else self.weight.dtype

    @property
    def table_device(self) -> torch.device:
        """Where the table lives."""
        table = self.weight if self.weight is not None else self.qweight
        assert table is not None
        return table.device

    def quantize_table(self, *, device: torch.device | str | None = None) -> None:
        """Store the table as int8 rows and bfloat16 row scales (``weight`` is dropped).

        ``device="meta"``: empty buffers of the right shapes, to load a quantized checkpoint
        into with ``load_state_dict(..., assign=True)``. A table already quantized is left as
        it is.
        """
        if self.weight is None:
            return
        weight = self.weight
        self.activation_dtype = weight.dtype
        if device is None:
            qweight, scale = quantize_int8(weight)
        else:
            rows, cols = weight.shape
            qweight = torch.empty(rows, cols, dtype=torch.int8, device=device)
            scale = torch.empty(rows, dtype=torch.bfloat16, device=device)
        self.register_parameter("weight", None)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of the table for non-negative ``ids [...]`` -> ``[..., table_dim]``."""
        if self.weight is not None:
            return F.embedding(ids, self.weight)
        assert self.qweight is not None and self.scale is not None
        rows = F.embedding(ids, self.qweight).to(self.activation_dtype)
        return rows * self.scale[ids].to(self.activation_dtype).unsqueeze(-1)

    def _apply(self, fn: Any, recurse: bool = True) -> TokenEmbedding:
        super()._apply(fn, recurse)
        if self.scale is not None:
            # ``.to(dtype)`` changes the lookups' dtype; the stored scales stay bfloat16.
            self.activation_dtype = fn(torch.empty(0, dtype=self.activation_dtype)).dtype
            self.scale = self.scale.to(torch.bfloat16)
        return self

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [...]`` (ids in ``[-1, num_embeddings)`` or muxed pairs) -> ``[..., dim]``."""
        is_zero = (tokens == ZERO_TOKEN_ID).unsqueeze(-1)
        safe = tokens.clamp(min=0)
        if self.out1 is not None and self.out2 is not None:
            main, second = demux_tokens(safe, self.num_embeddings)
            y = self.out1(self.lookup(main))
            y2 = self.out2(self.lookup(second.clamp(min=0)))
            y = y + y2.masked_fill((second < 0).unsqueeze(-1), 0.0)
            return y.masked_fill(is_zero, 0.0)
        y = self.lookup(safe)
        if self.norm is not None:
            y = self.norm(y)
        y = y.masked_fill(is_zero, 0.0)
        if self.low_rank is not None:
            y = self.low_rank(y)
        return y

    def extra_repr(self) -> str:
        table = self.weight if self.weight is not None else self.qweight
        assert table is not None
        rank = "" if self.low_rank is None else f", low_rank={table.shape[1]}"
        int8 = ", int8" if self.quantized else ""
        return f"{self.num_embeddings}, {self.dim}{rank}, demux={self.demux}{int8}"


def sinusoidal_embedding(
    positions: torch.Tensor,
    dim: int,
    *,
    max_period: float = 10_000.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``positions [B, T]`` -> ``[B, T, dim]``: ``[cos(p / max_period^(i/(dim/2-1))), sin(...)]``.

    Cosines first, then sines, computed in ``dtype`` (the reference computes the embedding of
    its ``"sin"`` transformers in the activation dtype and that of the fuser in float32).
    """
    half = dim // 2
    pos = positions.to(dtype).unsqueeze(-1)
    index = torch.arange(half, device=positions.device, dtype=dtype)
    base = torch.full([], max_period, device=positions.device, dtype=dtype)
    phase = pos / (base ** (index / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)
