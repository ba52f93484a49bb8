"""Multi-head self- and cross-attention (model-spec §2.2, §2.3).

Parameter names follow the published checkpoints: ``in_proj_weight`` holds the fused bias-free
q|k|v projection of every weight set, ``[mult * (D + 2 * D_kv), D]``, with the ``(p h d)`` head
split; ``out_proj.weight`` is ``[mult * D, D]``. ``mult`` is the number of weight sets (1, or
the depformer's per-step sets). Both are :class:`~dsm.nn.linear.Linear` modules (``in_proj``,
``out_proj``) whose row blocks are the weight sets; ``in_proj``'s weight is saved and loaded
under the checkpoint's ``in_proj_weight`` key.

Neither module owns streaming state: the transformer hands each call an
:class:`~dsm.nn.kv_cache.AttentionPlan` (positions, mask, where to write) and the layer's
:class:`~dsm.nn.kv_cache.KVCache`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .kv_cache import AttentionPlan, KVCache
from .linear import Linear, StackedLinear
from .rope import apply_rope

__all__ = ["CrossAttention", "StreamingMultiheadAttention"]


def _fused_in_proj(module: nn.Module, proj: Linear) -> None:
    """Attach ``proj`` as ``module.in_proj``, stored as ``in_proj_weight`` (the checkpoint key)
    in ``state_dict`` and read back from that key by ``load_state_dict``."""
    module.in_proj = proj

    def save(_: nn.Module, state: dict[str, Any], prefix: str, __: Any) -> None:
        if prefix + "in_proj.weight" in state:
            state[prefix + "in_proj_weight"] = state.pop(prefix + "in_proj.weight")

    def load(state: dict[str, Any], prefix: str, *_: Any) -> None:
        if prefix + "in_proj_weight" in state:
            state[prefix + "in_proj.weight"] = state.pop(prefix + "in_proj_weight")

    module._register_state_dict_hook(save)
    module._register_load_state_dict_pre_hook(load)


# A streaming step has a few queries per slot. For those, PyTorch's CPU SDPA kernels are slow:
# in bfloat16 (a flash kernel) 2 ms per slot and layer at 16 heads x 751 keys x 128 on one
# core, against 0.33 ms for two matmuls with float32 scores; in float32, 6.6 ms for 8 slots
# against 3.7 ms when the scores are computed as ``K @ q^T`` (a matrix-vector product per
# head, 3x faster in MKL than ``q @ K^T``).
_FEW_QUERIES = 4
# Keys of one chunk of slots upcast to float32 stay within this many bytes (cache-sized).
_CHUNK_BYTES = 8 << 20


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Scaled dot-product attention of ``q [B, H, T, Dh]`` over ``k, v [B, H, L, Dh]``.

    ``mask [B or 1, 1, T, L]`` (True = attend) or None. This is
    ``F.scaled_dot_product_attention`` except on CPU without gradients for at most
    :data:`_FEW_QUERIES` queries (a streaming step), where the scores ``K @ q^T`` and the
    softmax are computed in float32 (by chunks of slots for bfloat16/float16 keys): the same
    precision as SDPA's kernels, 1.8x (float32) to 6x (bfloat16) faster.
    """
    B, H, T, Dh = q.shape
    L = k.shape[2]
    if (
        q.device.type != "cpu"
        or q.dtype not in (torch.float32, torch.bfloat16, torch.float16)
        or T > _FEW_QUERIES
        or torch.is_grad_enabled()
    ):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    full = q.dtype == torch.float32
    rows = B if full else max(1, _CHUNK_BYTES // max(1, H * L * Dh * 4))
    scale = Dh**-0.5
    out = torch.empty_like(q)
    for start in range(0, B, rows):
        end = min(B, start + rows)
        keys = k[start:end].float()  # no copy for float32
        # [b, H, Dh, T] as a transposed contiguous [b, H, T, Dh]: the layout MKL runs as fast
        # matrix-vector products (a strided q, or a contiguous [b, H, Dh, T], is 4-5x slower).
        queries = q[start:end].float().contiguous().transpose(-1, -2)
        scores = torch.matmul(keys, queries).transpose(-1, -2)  # [b, H, T, L]
        scores.mul_(scale)
        if mask is not None:
            m = mask if mask.shape[0] == 1 else mask[start:end]
            scores.masked_fill_(~m, float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        torch.matmul(probs, v[start:end], out=out[start:end])
    return out


class StreamingMultiheadAttention(nn.Module):
    """Causal self-attention with RoPE, a ring/step KV cache and optional per-step weights.

    Args:
        embed_dim: model width ``D``.
        num_heads: query heads ``H``; head dim is ``D // H``.
        num_weight_sets: ``mult``, distinct weight sets (depformer per-step weights), else 1.
        kv_repeat: grouped-query factor; ``H // kv_repeat`` key/value heads.
    """

    def __init__(
        self, embed_dim: int, num_heads: int, num_weight_sets: int = 1, kv_repeat: int = 1
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        if num_heads % kv_repeat != 0:
            raise ValueError(f"num_heads {num_heads} is not a multiple of kv_repeat {kv_repeat}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.kv_repeat = kv_repeat
        self.num_kv_heads = num_heads // kv_repeat
        self.mult = num_weight_sets
        self.proj_dim = embed_dim + 2 * self.num_kv_heads * self.head_dim
        self.in_proj: StackedLinear
        _fused_in_proj(self, StackedLinear(embed_dim, self.proj_dim, self.mult))
        self.out_proj = StackedLinear(embed_dim, embed_dim, self.mult)

    def forward(
        self,
        x: torch.Tensor,
        plan: AttentionPlan,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """``x [B, T, D] -> [B, T, D]``.

        ``rope`` is ``(cos, sin)`` from :meth:`RotaryEmbedding.rotation` or None; without a
        ``cache`` the chunk attends only to itself (offline).
        """
        B, T, D = x.shape
        H, Hkv, Dh = self.num_heads, self.num_kv_heads, self.head_dim
        proj = self.in_proj(x, plan.weight_index)
        if self.kv_repeat == 1:
            qkv = proj.view(B, T, 3, H, Dh)
            if rope is not None:
                qk = apply_rope(qkv[:, :, :2], *rope)  # queries and keys in one pass
                q, k = qk[:, :, 0], qk[:, :, 1]
            else:
                q, k = qkv[:, :, 0], qkv[:, :, 1]
            v = qkv[:, :, 2]
        else:
            q = proj[..., :D].view(B, T, H, Dh)
            kv = proj[..., D:].view(B, T, 2, Hkv, Dh)
            k, v = kv[:, :, 0], kv[:, :, 1]
            if rope is not None:
                q = apply_rope(q, *rope)
                k = apply_rope(k, *rope)
        # q, k, v: [B, T, H(kv), Dh]
        if cache is None:
            keys, values = k.transpose(1, 2), v.transpose(1, 2)
        else:
            keys, values = cache.store(plan, k, v)
        # keys, values: [B, Hkv, L, Dh]
        if self.kv_repeat > 1:
            keys = keys.repeat_interleave(self.kv_repeat, dim=1)
            values = values.repeat_interleave(self.kv_repeat, dim=1)
        out = attend(q.transpose(1, 2), keys, values, plan.mask)
        out = out.transpose(1, 2).reshape(B, T, D)
        return self.out_proj(out, plan.weight_index)


class CrossAttention(nn.Module):
    """Attention from the stream to a fixed source: no RoPE, no mask, no per-step weights.

    ``in_proj_weight [3D, D]``: rows ``[0:D]`` project queries from the stream, rows ``[D:3D]``
    keys and values from the source. The source's K/V are computed once with
    :meth:`compute_kv` and reused for every step of a stream.
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        # Row blocks: queries [0:D], keys and values [D:3D].
        self.in_proj: Linear
        proj = Linear(embed_dim, 3 * embed_dim, bias=False, blocks=(embed_dim, 2 * embed_dim))
        _fused_in_proj(self, proj)
        self.out_proj = StackedLinear(embed_dim, embed_dim, 1)

    def compute_kv(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``src [B, S, D]`` -> ``(k, v)``, each ``[B, H, S, Dh]`` contiguous."""
        B, S, _ = src.shape
        kv = self.in_proj(src, 1).view(B, S, 2, self.num_heads, self.head_dim)
        kv = kv.permute(2, 0, 3, 1, 4).contiguous()  # [2, B, H, S, Dh]
        return kv[0], kv[1]

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``x [B, T, D]`` attends to ``k, v [B, H, S, Dh]``; returns ``[B, T, D]``."""
        B, T, D = x.shape
        q = self.in_proj(x, 0).view(B, T, self.num_heads, self.head_dim)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))
