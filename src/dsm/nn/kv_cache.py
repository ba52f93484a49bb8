"""Key/value caches and the per-call attention plan (model-spec §2.3).

All self-attention layers of one transformer see the same positions, so the bookkeeping that
depends only on positions (which ring slot each new entry goes to, the absolute position of
every cached key, the boolean mask, the RoPE angles) is computed **once per call** by the
transformer into an :class:`AttentionPlan`; each layer then only writes its own K/V into its
:class:`KVCache` and attends.

Two cache layouts:

* **ring** (:class:`RingPositions`, main transformers): capacity = ``context``; per-slot
  ``offsets [B]`` and absolute key positions ``key_pos [B, capacity]``; the new entries of a call
  are written at ``(offset + t) % capacity`` *before* attending, so a ``T > 1`` chunk can overwrite
  its oldest key before the chunk's first query reads it (the reference's behaviour, kept on
  purpose: Mimi feeds 2 frames per call). Slots whose exec mask is False write into a scratch
  column past the capacity and keep their offsets and key positions: their state is left
  bit-identical without any host sync.
* **step** (:class:`StepPositions`, depformer with weights per step): every slot is at the same
  step, held as a Python int; entries are appended at ``[step, step + T)`` and attention reads the
  prefix ``[:step + T]``. The exec mask is ignored (as in the reference) since the depformer is
  restarted every frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "AttentionPlan",
    "KVCache",
    "RingPositions",
    "StepPositions",
    "causal_mask",
    "offline_plan",
]

# Absolute position stored for an empty ring entry. It is so negative that ``pos_q - pos_k``
# always exceeds the context, so one window test also rejects empty entries.
EMPTY_POSITION = -(2**40)


@dataclass
class AttentionPlan:
    """What the self-attention layers of one transformer call share.

    Attributes:
        positions: ``[B or 1, T]`` long, absolute position of each query (for RoPE).
        mask: ``[B or 1, 1, T, L]`` bool (True = may attend), or None for "attend all keys".
        ring_rows: ``[B, 1]`` long, batch rows for ring writes (ring mode only).
        ring_index: ``[B, T]`` long, ring column of each new entry (ring mode only).
        key_len: ``L``, number of cache columns attended (ring / step mode).
        step: first position of the chunk (step mode only).
        weight_index: weight set used at each of the T positions, or None with one weight set.
    """

    positions: torch.Tensor
    mask: torch.Tensor | None
    ring_rows: torch.Tensor | None = None
    ring_index: torch.Tensor | None = None
    key_len: int = 0
    step: int | None = None
    weight_index: tuple[int, ...] | None = None


def causal_mask(pos_q: torch.Tensor, pos_k: torch.Tensor, context: int | None) -> torch.Tensor:
    """``[B, 1, T, L]`` bool: key at ``pos_k [B, L]`` visible from query at ``pos_q [B, T]``.

    Visible iff ``0 <= pos_q - pos_k < context`` (no upper bound when ``context`` is None).
    Keys at :data:`EMPTY_POSITION` fail the upper bound; callers without a context must not
    store empty keys.
    """
    delta = pos_q.unsqueeze(-1) - pos_k.unsqueeze(-2)
    mask = delta >= 0
    if context is not None:
        mask = mask & (delta < context)
    return mask.unsqueeze(1)


class KVCache:
    """Preallocated K/V of one attention layer: ``k``, ``v`` each ``[B, H_kv, L, D]``."""

    def __init__(
        self,
        batch_size: int,
        num_kv_heads: int,
        length: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (batch_size, num_kv_heads, length, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def reset(self, mask: torch.Tensor) -> None:
        """Zero the slots where ``mask [B]`` is True (stale NaNs must not leak through SDPA)."""
        m = mask.view(-1, 1, 1, 1)
        self.k.masked_fill_(m, 0)
        self.v.masked_fill_(m, 0)

    def store(
        self, plan: AttentionPlan, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new ``k, v [B, T, H_kv, D]`` as the plan says; return the keys/values to
        attend, ``[B, H_kv, L, D]`` views of the cache (no copy)."""
        T = k.shape[1]
        if plan.ring_index is not None:
            # Advanced indices on dims 0 and 2 put their [B, T] shape first: the value is
            # [B, T, H, D], which is exactly the projection layout.
            self.k[plan.ring_rows, :, plan.ring_index] = k
            self.v[plan.ring_rows, :, plan.ring_index] = v
            return self.k[:, :, : plan.key_len], self.v[:, :, : plan.key_len]
        assert plan.step is not None, "cache use needs a ring or step plan"
        s = plan.step
        self.k[:, :, s : s + T] = k.transpose(1, 2)
        self.v[:, :, s : s + T] = v.transpose(1, 2)
        return self.k[:, :, : s + T], self.v[:, :, : s + T]


class RingPositions:
    """Per-slot positions of a ring KV cache of ``capacity`` entries (window ``context``)."""

    def __init__(self, batch_size: int, capacity: int, context: int, device: torch.device) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.context = context
        self.offsets = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.key_pos = torch.full(
            (batch_size, capacity), EMPTY_POSITION, dtype=torch.long, device=device
        )
        self.rows = torch.arange(batch_size, device=device).unsqueeze(1)
        self._aranges: dict[int, torch.Tensor] = {}

    @property
    def cache_length(self) -> int:
        """Columns to allocate per layer: the ring plus one scratch column for paused slots."""
        return self.capacity + 1

    def reset(self, mask: torch.Tensor) -> None:
        """Put the slots where ``mask [B]`` is True back to an empty ring."""
        self.offsets.masked_fill_(mask, 0)
        self.key_pos.masked_fill_(mask.unsqueeze(1), EMPTY_POSITION)

    def _arange(self, T: int) -> torch.Tensor:
        ar = self._aranges.get(T)
        if ar is None:
            ar = torch.arange(T, device=self.offsets.device)
            self._aranges[T] = ar
        return ar

    def advance(self, T: int, exec_mask: torch.Tensor) -> AttentionPlan:
        """Plan a call of ``T`` new entries and advance the executing slots' positions."""
        if self.capacity < T:
            raise ValueError(
                f"a streaming chunk of {T} steps exceeds the KV cache capacity {self.capacity}; "
                "feed smaller chunks"
            )
        pos_q = self.offsets.unsqueeze(1) + self._arange(T)  # [B, T]
        ring = pos_q % self.capacity
        # Key positions as seen by this call: every slot attends as if it executed (so a paused
        # slot still gets finite outputs), but only executing slots keep the update.
        attn_pos = self.key_pos.scatter(1, ring, pos_q)  # [B, capacity]
        run = exec_mask.unsqueeze(1)
        self.key_pos.copy_(torch.where(run, attn_pos, self.key_pos))
        self.offsets.add_(exec_mask, alpha=T)
        return AttentionPlan(
            positions=pos_q,
            mask=causal_mask(pos_q, attn_pos, self.context),
            ring_rows=self.rows,
            ring_index=torch.where(run, ring, self.capacity),
            key_len=self.capacity,
        )


class StepPositions:
    """Shared step counter of a linear cache of ``capacity`` entries (weights-per-step mode)."""

    def __init__(self, capacity: int, context: int | None, device: torch.device) -> None:
        self.capacity = capacity
        self.context = context
        self.device = device
        self.step = 0

    @property
    def cache_length(self) -> int:
        """Columns to allocate per layer."""
        return self.capacity

    def reset(self, mask: torch.Tensor) -> None:
        """Restart every slot (all slots share one step, so ``mask`` cannot be partial)."""
        self.step = 0

    def advance(self, T: int, weight_index: tuple[int, ...] | None) -> AttentionPlan:
        """Plan a call of ``T`` new entries at the current step and advance the step."""
        s = self.step
        if s + T > self.capacity:
            raise ValueError(
                f"step {s} + {T} new entries exceed the {self.capacity} steps of this stream; "
                "reset the stream first"
            )
        self.step = s + T
        pos_q = torch.arange(s, s + T, device=self.device).unsqueeze(0)
        mask = None
        window_ok = self.context is None or s + T <= self.context
        if T > 1 or not window_ok:
            pos_k = torch.arange(s + T, device=self.device).unsqueeze(0)
            mask = causal_mask(pos_q, pos_k, self.context)
        return AttentionPlan(
            positions=pos_q, mask=mask, key_len=s + T, step=s, weight_index=weight_index
        )


def offline_plan(
    T: int,
    device: torch.device,
    causal: bool,
    context: int | None,
    weight_index: tuple[int, ...] | None = None,
) -> AttentionPlan:
    """Plan for a fresh stream fed as one chunk of ``T`` steps, attending without a cache."""
    pos = torch.arange(T, device=device).unsqueeze(0)
    mask = causal_mask(pos, pos, context) if causal else None
    return AttentionPlan(positions=pos, mask=mask, weight_index=weight_index)
