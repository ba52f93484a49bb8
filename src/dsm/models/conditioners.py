"""Conditioners and the condition fuser of the DSM language model (model-spec §2.7).

A conditioner turns one named attribute into a ``[B, T, D]`` float32 tensor (``D`` = LM width):

* :class:`LUTConditioner` (``type "lut"``): a string value -> one row of ``embed``
  (``[B, 1, dim]``), e.g. the TTS ``cfg`` strength or ``control``;
* :class:`TensorConditioner` (``type "tensor"``): a given ``[B, T, dim]`` tensor with a
  ``[B, T]`` mask, e.g. the TTS ``speaker_wavs`` voice embeddings.

Both end with ``output_proj`` (bias-free ``dim -> D``) and replace masked positions (a ``None``
text, a False mask) by ``learnt_padding [1, 1, D]``. The fuser then makes two tensors:

* ``sum [B, 1, D]``: the ``sum`` conditions added together (added to the input embedding at
  every step);
* ``cross [B, S, D]``: the ``cross`` conditions concatenated along time, plus
  ``scale * sinusoidal(position)`` when ``cross_attention_pos_emb`` is set (the source of the
  cross-attention blocks).

Conditioners always run in float32 (their checkpoint tensors are loaded as float32); the LM casts
the fused tensors to its own dtype when it uses them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from dsm.checkpoint.config import ConditionerConfig, FuserConfig
from dsm.errors import ConfigError
from dsm.models.embeddings import sinusoidal_embedding
from dsm.nn.linear import Linear

__all__ = [
    "ConditionProvider",
    "Conditions",
    "LUTConditioner",
    "TensorConditioner",
    "fuse_conditions",
]

TextInputs = dict[str, list[str | None]]
TensorInputs = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Conditions:
    """Fused conditions for a batch of ``B`` streams (float32, on the conditioners' device).

    Attributes:
        sum: ``[B, 1, D]`` added to the input embedding at every step, or None.
        cross: ``[B, S, D]`` cross-attention source, or None.
    """

    sum: torch.Tensor | None = None
    cross: torch.Tensor | None = None

    @property
    def batch_size(self) -> int | None:
        """``B``, or None when there is no condition tensor at all."""
        for tensor in (self.sum, self.cross):
            if tensor is not None:
                return int(tensor.shape[0])
        return None

    @staticmethod
    def cat(parts: list[Conditions]) -> Conditions:
        """Concatenate along the batch (e.g. conditional + null rows for CFG).

        Cross sources must have the same length ``S`` in every part.
        """
        sums = [p.sum for p in parts]
        crosses = [p.cross for p in parts]
        if any(s is None for s in sums) and not all(s is None for s in sums):
            raise ValueError("cannot concatenate Conditions where only some have a 'sum' tensor")
        if any(c is None for c in crosses) and not all(c is None for c in crosses):
            raise ValueError("cannot concatenate Conditions where only some have a 'cross' tensor")
        return Conditions(
            sum=None if sums[0] is None else torch.cat([s for s in sums if s is not None]),
            cross=None if crosses[0] is None else torch.cat([c for c in crosses if c is not None]),
        )

    def to(self, dtype: torch.dtype) -> Conditions:
        """A copy with both tensors cast to ``dtype`` (e.g. the LM's dtype, once per stream)."""
        return Conditions(
            sum=None if self.sum is None else self.sum.to(dtype),
            cross=None if self.cross is None else self.cross.to(dtype),
        )


class _Conditioner(nn.Module):
    """Shared tail: ``output_proj`` then learnt padding where the mask is False."""

    def __init__(self, dim: int, output_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.output_dim = output_dim
        self.output_proj = Linear(dim, output_dim, bias=False)
        self.learnt_padding = nn.Parameter(torch.zeros(1, 1, output_dim))

    def _finish(self, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``cond [B, T, dim]``, ``mask [B, T]`` -> ``[B, T, D]`` float32."""
        out = self.output_proj(cond.to(next(self.output_proj.parameters()).dtype))
        return torch.where(mask.unsqueeze(-1), out, self.learnt_padding.to(out.dtype))


class LUTConditioner(_Conditioner):
    """A string attribute -> ``[B, 1, D]`` via a lookup table (``n_bins`` values + padding row).

    With ``possible_values``, a value maps to its index there (an unknown value is an error);
    without, it maps to ``sha256(value) % n_bins``. ``None`` maps to learnt padding.
    """

    def __init__(self, config: ConditionerConfig, output_dim: int) -> None:
        super().__init__(config.dim, output_dim)
        self.name = config.name
        self.n_bins = config.n_bins
        self.possible_values = tuple(config.possible_values)
        self._index = {value: i for i, value in enumerate(self.possible_values)}
        # One extra row: the reference's padding index (looked up, then replaced by padding).
        self.embed = nn.Embedding(config.n_bins + 1, config.dim)

    def value_index(self, value: str | None) -> int:
        """Row of ``embed`` for ``value`` (``n_bins`` for None)."""
        if value is None:
            return self.n_bins
        if self.possible_values:
            if value not in self._index:
                raise ValueError(
                    f"condition {self.name!r} got {value!r}; expected one of "
                    f"{list(self.possible_values)} or None"
                )
            return self._index[value]
        digest = hashlib.sha256(value.encode("utf-8")).hexdigest()
        return int(digest, 16) % self.n_bins

    def forward(self, values: list[str | None]) -> torch.Tensor:
        """``B`` values -> ``[B, 1, D]`` float32."""
        device = self.embed.weight.device
        index = torch.tensor([self.value_index(v) for v in values], dtype=torch.long)
        mask = torch.tensor([v is not None for v in values], dtype=torch.bool)
        cond = self.embed(index.to(device)).unsqueeze(1)
        return self._finish(cond, mask.to(device).unsqueeze(1))


class TensorConditioner(_Conditioner):
    """A ``[B, T, dim]`` tensor with mask ``[B, T]`` -> ``[B, T, D]`` float32."""

    def __init__(self, config: ConditionerConfig, output_dim: int) -> None:
        super().__init__(config.dim, output_dim)
        self.name = config.name

    def forward(self, tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``tensor [B, T, dim]``, ``mask [B, T]`` bool -> ``[B, T, D]`` float32."""
        if tensor.dim() != 3 or tensor.shape[-1] != self.dim:
            raise ValueError(
                f"condition {self.name!r} expects a [B, T, {self.dim}] tensor, "
                f"got {tuple(tensor.shape)}"
            )
        if mask.shape != tensor.shape[:2]:
            raise ValueError(
                f"condition {self.name!r}: mask shape {tuple(mask.shape)} does not match "
                f"tensor shape {tuple(tensor.shape[:2])}"
            )
        device = self.learnt_padding.device
        return self._finish(tensor.to(device), mask.to(device=device, dtype=torch.bool))


class ConditionProvider(nn.Module):
    """All conditioners of a checkpoint, keyed by name (``conditioners.{name}`` in the weights)."""

    def __init__(self, configs: tuple[ConditionerConfig, ...], output_dim: int) -> None:
        super().__init__()
        modules: dict[str, nn.Module] = {}
        for config in configs:
            if config.type == "lut":
                modules[config.name] = LUTConditioner(config, output_dim)
            elif config.type == "tensor":
                modules[config.name] = TensorConditioner(config, output_dim)
            else:
                raise ConfigError(f"conditioner {config.name!r} has unknown type {config.type!r}")
        self.conditioners = nn.ModuleDict(modules)

    def provide(
        self, text: TextInputs | None, tensors: TensorInputs | None, batch_size: int
    ) -> dict[str, torch.Tensor]:
        """Run every conditioner on its input; ``{name: [B, T, D] float32}``.

        Every conditioner must receive an input (a text value may be None, a tensor may be fully
        masked); names that match no conditioner are rejected.
        """
        text = dict(text or {})
        tensors = dict(tensors or {})
        known = set(self.conditioners.keys())
        unknown = sorted((set(text) | set(tensors)) - known)
        if unknown:
            raise ValueError(f"unknown condition(s) {unknown}; this model has {sorted(known)}")
        out: dict[str, torch.Tensor] = {}
        for name, module in self.conditioners.items():
            if isinstance(module, LUTConditioner):
                if name not in text:
                    raise ValueError(f"missing text condition {name!r} (give None for padding)")
                values = text[name]
                if len(values) != batch_size:
                    raise ValueError(
                        f"condition {name!r} has {len(values)} values for batch size {batch_size}"
                    )
                out[name] = module(values)
            else:
                assert isinstance(module, TensorConditioner)
                if name not in tensors:
                    raise ValueError(
                        f"missing tensor condition {name!r} (give a tensor with an all-False "
                        "mask for padding)"
                    )
                tensor, mask = tensors[name]
                if tensor.shape[0] != batch_size:
                    raise ValueError(
                        f"condition {name!r} has batch {tensor.shape[0]}, expected {batch_size}"
                    )
                out[name] = module(tensor, mask)
        return out


def fuse_conditions(fuser: FuserConfig, conditions: dict[str, torch.Tensor]) -> Conditions:
    """Combine conditioner outputs into the ``sum`` and ``cross`` tensors of :class:`Conditions`."""
    total: torch.Tensor | None = None
    for name in fuser.sum:
        cond = conditions[name]
        if cond.shape[1] != 1:
            raise ValueError(f"sum condition {name!r} must have length 1, got {cond.shape[1]}")
        total = cond if total is None else total + cond
    cross: torch.Tensor | None = None
    if fuser.cross:
        cross = torch.cat([conditions[name] for name in fuser.cross], dim=1)
        if fuser.cross_attention_pos_emb:
            positions = torch.arange(cross.shape[1], device=cross.device).unsqueeze(0)
            pos = sinusoidal_embedding(positions, cross.shape[2]).to(cross.dtype)
            cross = cross + fuser.cross_attention_pos_emb_scale * pos
    return Conditions(sum=total, cross=cross)
