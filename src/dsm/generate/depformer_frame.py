"""One depformer frame as a flat loop over preallocated state (inference only).

The module path (:meth:`dsm.models.lm.LMModel.depformer_step` through
:class:`~dsm.nn.transformer.StreamingTransformer`) re-plans every one of the ``dep_q x layers``
inner steps: module calls, row-block dispatch, step positions, cache views, dtype checks. At
batch 1 on CPU that bookkeeping cost more than the matrix products (tts-1.6b int8 on 2 cores:
about 165 ms of a 270 ms frame). :class:`DepformerFrame` resolves all of it once, when streaming
starts:

* each projection of each inner step is bound to its weight set (for int8 on CPU straight to
  dsm's native kernel, :mod:`dsm.nn.native`; otherwise the module's own row-block product);
* the K/V of the ``dep_q`` inner steps live in one preallocated ``[B, H, dep_q, Dh]`` buffer per
  layer, written in place; every step attends to a fixed prefix view of it.

It runs the same operations, in the same order and precision, as the module path (the norms'
and the attention's own functions), so its logits are bitwise those of
:meth:`~dsm.models.lm.LMModel.depformer_step` (a test checks this on float32, int8 and int4
models). Models it does not cover (RoPE or a sinusoidal embedding in the depformer, grouped
K/V, a context window, cross-attention, an ungated FFN) keep the module path:
:meth:`DepformerFrame.supports` says which.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dsm.models.lm import LMModel
from dsm.nn.attention import attend
from dsm.nn.gating import ActivationGating
from dsm.nn.linear import Linear, projection_dtype
from dsm.nn.quantized import QuantizedLinear
from dsm.nn.transformer import StreamingTransformer, StreamingTransformerLayer

__all__ = ["DepformerFrame"]

Product = Callable[[torch.Tensor], torch.Tensor]


def _bind(module: nn.Module, block: int, rows: int) -> Product:
    """``x [rows, K] -> [rows, N_block]``: ``module(x, block)`` with its dispatch resolved."""
    if isinstance(module, QuantizedLinear) and module.bias is None:
        native = module.native_int8(rows)
        if native is not None and not torch.is_grad_enabled():
            start, end = module.block_starts[block], module.block_starts[block + 1]
            q, s = module.qweight[start:end], module.scale[start:end]
            native.int8(torch.zeros(rows, module.in_features), q, s)  # checks the tensors once
            dtype = module.activation_dtype
            # This step's output buffer: read before the same step of the next frame runs.
            out = torch.empty(rows, end - start, dtype=torch.float32, device=q.device)
            into = native.int8_into

            def int8(x: torch.Tensor) -> torch.Tensor:
                if x.dtype != torch.float32 or not x.is_contiguous():
                    x = x.to(torch.float32).contiguous()
                into(x, q, s, out)
                return out if dtype == torch.float32 else out.to(dtype)

            return int8
    if isinstance(module, (Linear, QuantizedLinear)):
        product = module._product

        def blockwise(x: torch.Tensor) -> torch.Tensor:
            return product(x, block)

        return blockwise

    def call(x: torch.Tensor) -> torch.Tensor:  # e.g. a LoRA wrapper: forward(x, index)
        return module(x, block)

    return call


class _Layer:
    """One depformer layer's per-step products and its K/V buffer."""

    def __init__(
        self,
        layer: StreamingTransformerLayer,
        sets: list[int],
        rows: int,
        steps: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        attn = layer.self_attn
        self.norm1 = layer.norm1.forward
        self.norm2 = layer.norm2.forward
        self.scale1 = layer.layer_scale_1
        self.scale2 = layer.layer_scale_2
        self.identity1 = isinstance(self.scale1, nn.Identity)
        self.identity2 = isinstance(self.scale2, nn.Identity)
        self.heads, self.head_dim = attn.num_heads, attn.head_dim
        assert isinstance(layer.gating, nn.ModuleList)
        gates = [g for g in layer.gating if isinstance(g, ActivationGating)]
        self.in_proj = [_bind(attn.in_proj, s, rows) for s in sets]
        self.out_proj = [_bind(attn.out_proj, s, rows) for s in sets]
        self.ffn_in = [_bind(gates[s].linear_in, 0, rows) for s in sets]
        self.ffn_out = [_bind(gates[s].linear_out, 0, rows) for s in sets]
        self.activation = [gates[s].activation for s in sets]
        self.hidden = [gates[s].hidden for s in sets]
        shape = (rows, self.heads, steps, self.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """``x [B, 1, D]`` at inner step ``step`` -> ``[B, 1, D]``."""
        B = x.shape[0]
        H, Dh = self.heads, self.head_dim
        qkv = self.in_proj[step](self.norm1(x).view(B, -1)).view(B, 3, H, Dh)
        self.k[:, :, step] = qkv[:, 1]
        self.v[:, :, step] = qkv[:, 2]
        keys, values = self.k[:, :, : step + 1], self.v[:, :, : step + 1]
        out = attend(qkv[:, 0, :, None], keys, values, None)  # [B, H, 1, Dh]
        update = self.out_proj[step](out.reshape(B, H * Dh)).view(B, 1, -1)
        x = x + (update if self.identity1 else self.scale1(update))
        h = self.ffn_in[step](self.norm2(x).view(B, -1))
        hidden = self.hidden[step]
        gated = self.activation[step](h[:, :hidden]) * h[:, hidden:]
        update = self.ffn_out[step](gated).view(B, 1, -1)
        return x + (update if self.identity2 else self.scale2(update))


class DepformerFrame:
    """The depformer of ``lm`` for ``rows`` slots and the first ``steps`` codebooks.

    Call :meth:`logits` for steps ``0, 1, ...`` of a frame in order (no reset needed: step 0
    overwrites what a frame reads). Build it inside ``torch.no_grad()`` and after the model's
    weights are final (it binds their storage).
    """

    def __init__(self, lm: LMModel, rows: int, steps: int) -> None:
        dep = lm.depformer
        if not self.supports(lm):
            raise ValueError("this depformer needs the module path (see DepformerFrame.supports)")
        assert isinstance(dep, StreamingTransformer)
        self.lm = lm
        sets = [dep.weight_set_for_step(s) for s in range(steps)]
        layer = dep._layer_list()[0]
        device, dtype = projection_dtype(layer.self_attn)  # the module path's KV cache dtype
        self.layers = [_Layer(lay, sets, rows, steps, device, dtype) for lay in dep._layer_list()]
        self.heads = [_bind(lm.linears[s], 0, rows) for s in range(steps)]
        self.norms = [lm.depformer_norms[s] for s in range(steps)]
        self.identity_norm = [isinstance(n, nn.Identity) for n in self.norms]

    @staticmethod
    def supports(lm: LMModel) -> bool:
        """Whether :class:`DepformerFrame` covers this LM's depformer (else use the module
        path)."""
        dep = lm.depformer
        if dep is None or dep.rope is not None or lm._dep_sin or dep.context is not None:
            return False
        if dep.has_cross_attention or not dep.weights_per_step:
            return False
        for layer in dep._layer_list():
            attn = layer.self_attn
            if attn.kv_repeat != 1 or not isinstance(layer.gating, nn.ModuleList):
                return False
        return True

    def logits(self, step: int, projected: torch.Tensor, prev_token: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, card]`` of codebook ``step``; ``projected`` is this step's input
        projection (:meth:`LMModel.depformer_inputs`), ``prev_token [B]`` as for
        :meth:`LMModel.depformer_step`."""
        x = (projected + self.lm._depformer_token_emb(step, prev_token)).unsqueeze(1)
        for layer in self.layers:
            x = layer(x, step)
        y = x[:, 0]
        if not self.identity_norm[step]:
            y = self.norms[step](y)
        return self.heads[step](y)
