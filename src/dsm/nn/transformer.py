"""Streaming transformer of Mimi, the DSM LM and the depformer (model-spec §2.2, §2.3, §3.4).

A :class:`StreamingTransformer` is the only streaming module of the stack: its state holds the
positions (ring or step, see :mod:`dsm.nn.kv_cache`), one :class:`KVCache` per layer and the
cross-attention K/V. The layers are plain modules driven by the per-call
:class:`AttentionPlan`, so the positions, mask and RoPE angles are computed once per call
rather than once per layer.

State-dict keys match the published checkpoints (``layers.{l}.self_attn.in_proj_weight``,
``layers.{l}.norm1.alpha``, ``layers.{l}.gating.linear_in.weight`` ...), so weights load with
``load_state_dict(strict=True)`` and no key map. Every projection is a
:class:`~dsm.nn.linear.Linear` module (the attention's fused ``in_proj`` is saved under its
checkpoint key ``in_proj_weight``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from .attention import CrossAttention, StreamingMultiheadAttention
from .gating import ActivationGating
from .kv_cache import AttentionPlan, KVCache, RingPositions, StepPositions, offline_plan
from .linear import Linear, projection_dtype
from .norms import LayerScale, make_norm
from .rope import RotaryEmbedding
from .streaming import StreamingModule, StreamingState

__all__ = ["StreamingTransformer", "StreamingTransformerLayer", "TransformerState"]

Rotation = tuple[torch.Tensor, torch.Tensor]


class StreamingTransformerLayer(nn.Module):
    """Pre-norm layer: ``x += LS1(SA(norm1 x))``; ``x += LSc(CA(norm_cross x))``;
    ``x += LS2(FFN(norm2 x))``.

    Args:
        d_model: width ``D``.
        num_heads: attention heads.
        dim_feedforward: FFN size (one per weight set allowed with gating and per-step weights).
        norm: norm kind of ``norm1``/``norm2`` (see :func:`dsm.nn.norms.make_norm`).
        layer_scale: LayerScale init, or None for no LayerScale.
        gating: ``"none"`` for ``linear2(gelu(linear1 x))``, else the gated FFN's activation.
        kv_repeat: grouped-query factor.
        num_weight_sets: distinct per-step weight sets (attention projections and FFN), or 1.
        cross_attention: add a cross-attention block (``norm_cross`` is always a LayerNorm).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        dim_feedforward: int | Sequence[int],
        *,
        norm: str = "layer_norm",
        layer_scale: float | None = None,
        gating: str = "none",
        kv_repeat: int = 1,
        num_weight_sets: int = 1,
        cross_attention: bool = False,
    ) -> None:
        super().__init__()
        self.num_weight_sets = num_weight_sets
        self.self_attn = StreamingMultiheadAttention(d_model, num_heads, num_weight_sets, kv_repeat)
        self.norm1 = make_norm(norm, d_model)
        self.norm2 = make_norm(norm, d_model)
        self.linear1: Linear | None = None
        self.linear2: Linear | None = None
        self.gating: nn.Module | None = None
        if gating == "none":
            if num_weight_sets > 1 or not isinstance(dim_feedforward, int):
                raise ValueError("per-step weights or a list dim_feedforward need a gated FFN")
            self.linear1 = Linear(d_model, dim_feedforward, bias=False)
            self.linear2 = Linear(dim_feedforward, d_model, bias=False)
        elif num_weight_sets > 1:
            dims = _per_set(dim_feedforward, num_weight_sets)
            self.gating = nn.ModuleList([ActivationGating(d_model, h, gating) for h in dims])
        else:
            (dim,) = _per_set(dim_feedforward, 1)
            self.gating = ActivationGating(d_model, dim, gating)
        self.cross_attention: CrossAttention | None = None
        if cross_attention:
            self.cross_attention = CrossAttention(d_model, num_heads)
            self.norm_cross = nn.LayerNorm(d_model, eps=1e-5)
        self.layer_scale_1: nn.Module = nn.Identity()
        self.layer_scale_2: nn.Module = nn.Identity()
        self.layer_scale_cross: nn.Module = nn.Identity()
        if layer_scale is not None:
            self.layer_scale_1 = LayerScale(d_model, layer_scale)
            self.layer_scale_2 = LayerScale(d_model, layer_scale)
            if cross_attention:
                self.layer_scale_cross = LayerScale(d_model, layer_scale)

    def _feed_forward(self, x: torch.Tensor, weight_index: tuple[int, ...] | None) -> torch.Tensor:
        if self.linear1 is not None:
            assert self.linear2 is not None
            return self.linear2(F.gelu(self.linear1(x)))
        assert self.gating is not None
        if not isinstance(self.gating, nn.ModuleList):
            return self.gating(x)
        assert weight_index is not None, "per-step FFN weights need a weight index"
        if len(weight_index) == 1:
            return self.gating[weight_index[0]](x)
        return torch.cat([self.gating[i](x[:, t : t + 1]) for t, i in enumerate(weight_index)], 1)

    def forward(
        self,
        x: torch.Tensor,
        plan: AttentionPlan,
        rope: Rotation | None = None,
        cache: KVCache | None = None,
        cross_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``x [B, T, D] -> [B, T, D]``; ``cross_kv`` from :meth:`CrossAttention.compute_kv`."""
        update = self.self_attn(self.norm1(x), plan, rope, cache)
        x = x + self.layer_scale_1(update)
        if self.cross_attention is not None:
            if cross_kv is None:
                raise ValueError("this layer has cross-attention: a cross source is required")
            update = self.cross_attention(self.norm_cross(x), *cross_kv)
            x = x + self.layer_scale_cross(update)
        update = self._feed_forward(self.norm2(x), plan.weight_index)
        return x + self.layer_scale_2(update)


def _per_set(dim_feedforward: int | Sequence[int], n: int) -> list[int]:
    if isinstance(dim_feedforward, int):
        return [dim_feedforward] * n
    dims = list(dim_feedforward)
    if len(dims) != n:
        raise ValueError(f"dim_feedforward has {len(dims)} entries, expected {n} (weight sets)")
    return dims


class TransformerState(StreamingState):
    """Streaming state of a :class:`StreamingTransformer`.

    Attributes:
        positions: :class:`RingPositions` (per-slot) or :class:`StepPositions` (shared step).
        caches: one :class:`KVCache` per layer.
        cross_kv: per layer ``(k, v) [B, H, S, Dh]`` of the cross source, or None until set.
    """

    def __init__(
        self,
        exec_mask: torch.Tensor,
        positions: RingPositions | StepPositions,
        caches: list[KVCache],
    ) -> None:
        super().__init__(exec_mask)
        self.positions = positions
        self.caches = caches
        self.cross_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def reset(self, mask: torch.Tensor) -> None:
        """Put the slots in ``mask [B]`` back to a fresh stream (K/V zeroed, positions 0).

        In step mode every slot restarts (they share one step). The cross-attention K/V are
        kept, as in the reference: replace them with
        :meth:`StreamingTransformer.set_cross_source` for slots that start a new stream.
        """
        self.positions.reset(mask)
        if isinstance(self.positions, RingPositions):
            for cache in self.caches:
                cache.reset(mask)


class StreamingTransformer(StreamingModule):
    """Stack of :class:`StreamingTransformerLayer` with streaming state.

    Args:
        d_model: width ``D``.
        num_heads: attention heads ``H``.
        num_layers: number of layers.
        dim_feedforward: FFN size (``int(hidden_scale * D)`` in the checkpoints' configs).
        causal: causal self-attention (streaming requires it).
        context: attention window in steps (a query sees at most ``context`` keys, itself
            included) and ring-cache capacity; None = unbounded (offline / step mode only).
        positional_embedding: ``"rope"`` (interleaved) or ``"none"``.
        max_period: RoPE base.
        gating: ``"none"`` or a gated-FFN activation (``"silu"``, ``"gelu"`` ...).
        norm: ``"layer_norm"``, ``"layer_norm_f32"``, ``"rms_norm"`` or ``"rms_norm_f32"``.
        layer_scale: LayerScale init (Mimi: 0.01), or None.
        cross_attention: add cross-attention to every layer.
        weights_per_step: if > 0, the number of steps of a stream, each with its own weight set
            (depformer); the stream is then stepped with a shared Python step counter.
        weights_per_step_schedule: step -> weight set (length ``weights_per_step``), or None for
            one set per step.
        kv_repeat: grouped-query factor.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_layers: int,
        dim_feedforward: int | Sequence[int] = 2048,
        *,
        causal: bool = True,
        context: int | None = None,
        positional_embedding: str = "rope",
        max_period: float = 10_000.0,
        gating: str = "none",
        norm: str = "layer_norm",
        layer_scale: float | None = None,
        cross_attention: bool = False,
        weights_per_step: int = 0,
        weights_per_step_schedule: Sequence[int] | None = None,
        kv_repeat: int = 1,
    ) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model {d_model} is not a multiple of num_heads {num_heads}")
        if positional_embedding not in ("rope", "none"):
            raise ValueError(
                f"unsupported positional_embedding {positional_embedding!r}; use 'rope' or 'none'"
            )
        if context is not None and context < 1:
            raise ValueError(f"context must be >= 1 or None, got {context}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.causal = causal
        self.context = context
        self.weights_per_step = weights_per_step
        self.schedule: tuple[int, ...] | None = None
        num_weight_sets = 1
        if weights_per_step:
            if weights_per_step_schedule is not None:
                self.schedule = tuple(int(i) for i in weights_per_step_schedule)
                if len(self.schedule) != weights_per_step:
                    raise ValueError(
                        f"weights_per_step_schedule has {len(self.schedule)} entries, "
                        f"expected weights_per_step={weights_per_step}"
                    )
                num_weight_sets = max(self.schedule) + 1
            else:
                num_weight_sets = weights_per_step
        self.num_weight_sets = num_weight_sets
        self.rope: RotaryEmbedding | None = None
        if positional_embedding == "rope":
            self.rope = RotaryEmbedding(d_model // num_heads, max_period)
        self.layers = nn.ModuleList(
            [
                StreamingTransformerLayer(
                    d_model,
                    num_heads,
                    dim_feedforward,
                    norm=norm,
                    layer_scale=layer_scale,
                    gating=gating,
                    kv_repeat=kv_repeat,
                    num_weight_sets=num_weight_sets,
                    cross_attention=cross_attention,
                )
                for _ in range(num_layers)
            ]
        )
        self.has_cross_attention = cross_attention

    # -- weights per step ---------------------------------------------------------------------

    def weight_set_for_step(self, step: int) -> int:
        """Weight set used at position ``step`` of a stream (``schedule[step]`` or ``step``)."""
        if not 0 <= step < self.weights_per_step:
            raise ValueError(f"step {step} is outside 0..{self.weights_per_step - 1}")
        return self.schedule[step] if self.schedule is not None else step

    def _weight_index(self, start: int, T: int) -> tuple[int, ...] | None:
        if not self.weights_per_step:
            return None
        if start + T > self.weights_per_step:
            raise ValueError(
                f"positions {start}..{start + T - 1} exceed weights_per_step="
                f"{self.weights_per_step}"
            )
        return tuple(self.weight_set_for_step(t) for t in range(start, start + T))

    # -- streaming ----------------------------------------------------------------------------

    def init_state(self, batch_size: int, exec_mask: torch.Tensor) -> TransformerState:
        """Allocate positions and one KV cache per layer for ``batch_size`` slots."""
        if not self.causal:
            raise RuntimeError("streaming needs a causal transformer")
        layers = self._layer_list()
        device, dtype = projection_dtype(layers[0].self_attn)
        positions: RingPositions | StepPositions
        if self.weights_per_step:
            positions = StepPositions(self.weights_per_step, self.context, device)
        elif self.context is not None:
            positions = RingPositions(batch_size, self.context, self.context, device)
        else:
            raise RuntimeError("streaming needs a context (KV cache capacity) or weights_per_step")
        caches = []
        for layer in layers:
            attn = layer.self_attn
            caches.append(
                KVCache(
                    batch_size,
                    attn.num_kv_heads,
                    positions.cache_length,
                    attn.head_dim,
                    device,
                    dtype,
                )
            )
        return TransformerState(exec_mask, positions, caches)

    def _state(self) -> TransformerState | None:
        state = self._streaming_state
        assert state is None or isinstance(state, TransformerState)
        return state

    def _layer_list(self) -> list[StreamingTransformerLayer]:
        return [cast(StreamingTransformerLayer, layer) for layer in self.layers]

    def _cross_kv(self, src: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for layer in self._layer_list():
            assert layer.cross_attention is not None
            attn = layer.cross_attention
            out.append(attn.compute_kv(src.to(projection_dtype(attn)[1])))
        return out

    def set_cross_source(self, src: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Set the cross-attention source ``src [B, S, D]`` of the running stream.

        With ``mask [B]`` (bool) only those slots take the new source (``S`` must match the
        current one); the K/V buffers are updated in place, so their addresses stay fixed.
        """
        if not self.has_cross_attention:
            raise RuntimeError("this transformer has no cross-attention")
        state = self._state()
        if state is None:
            raise RuntimeError("set_cross_source needs a running stream (use dsm.nn.streaming)")
        if src.shape[0] != state.batch_size:
            raise ValueError(f"cross source has {src.shape[0]} rows, stream has {state.batch_size}")
        current = state.cross_kv
        if mask is not None and current is not None and current[0][0].shape[2] == src.shape[1]:
            # Only the slots that take the new source are projected (a slot joining a busy
            # batch costs one row, not B). Called when slots start, not per step, so reading
            # the mask on the host is fine.
            rows = mask.to(src.device).nonzero()[:, 0]
            if rows.numel() == 0:
                return
            new = self._cross_kv(src.index_select(0, rows))
            for (k_old, v_old), (k_new, v_new) in zip(current, new, strict=True):
                k_old.index_copy_(0, rows.to(k_old.device), k_new)
                v_old.index_copy_(0, rows.to(v_old.device), v_new)
            return
        new = self._cross_kv(src)
        if current is None:
            if mask is not None:
                raise RuntimeError("the first cross source of a stream must cover all slots")
            state.cross_kv = new
            return
        if current[0][0].shape != new[0][0].shape:
            if mask is not None:
                raise ValueError(
                    f"cross source length {src.shape[1]} differs from the stream's "
                    f"{current[0][0].shape[2]}; a partial update needs the same length"
                )
            state.cross_kv = new
            return
        for (k_old, v_old), (k_new, v_new) in zip(current, new, strict=True):
            k_old.copy_(k_new)
            v_old.copy_(v_new)

    # -- forward ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, cross_src: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, T, D] -> [B, T, D]``.

        Offline (no stream): a fresh stream fed ``x`` as one chunk. Streaming: ``T`` new steps
        for every slot (slots paused by the exec mask keep their state). ``cross_src [B, S, D]``
        is required with cross-attention; while streaming it is read once, on the first call
        (later calls reuse the cached K/V; use :meth:`set_cross_source` to replace it).
        """
        B, T, _ = x.shape
        state = self._state()
        caches: list[KVCache | None]
        if state is None:
            plan = offline_plan(T, x.device, self.causal, self.context, self._weight_index(0, T))
            caches = [None] * len(self.layers)
        else:
            if state.batch_size != B:
                raise ValueError(f"input has {B} rows, the stream has {state.batch_size} slots")
            positions = state.positions
            if isinstance(positions, StepPositions):
                plan = positions.advance(T, self._weight_index(positions.step, T))
            else:
                plan = positions.advance(T, state.exec_mask)
            caches = list(state.caches)

        cross: list[tuple[torch.Tensor, torch.Tensor]] | list[None]
        if self.has_cross_attention:
            if state is not None and state.cross_kv is not None:
                cross = state.cross_kv
            elif cross_src is None:
                raise ValueError("this transformer has cross-attention: pass cross_src")
            else:
                cross = self._cross_kv(cross_src)
                if state is not None:
                    state.cross_kv = cross
        else:
            if cross_src is not None:
                raise ValueError("cross_src given but this transformer has no cross-attention")
            cross = [None] * len(self.layers)

        rope = None if self.rope is None else self.rope.rotation(plan.positions)
        for layer, cache, cross_kv in zip(self.layers, caches, cross, strict=True):
            x = layer(x, plan, rope, cache, cross_kv)
        return x
