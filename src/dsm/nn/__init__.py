"""Neural-network building blocks: projections, streaming state, attention with KV caches,
transformers."""

from __future__ import annotations

from .linear import (
    Linear,
    StackedLinear,
    packed_weight_bytes,
    replace_linears,
    set_cpu_kernels,
)
from .streaming import StreamingControl, StreamingModule, StreamingState, streaming
from .transformer import StreamingTransformer, StreamingTransformerLayer

__all__ = [
    "Linear",
    "StackedLinear",
    "StreamingControl",
    "StreamingModule",
    "StreamingState",
    "StreamingTransformer",
    "StreamingTransformerLayer",
    "packed_weight_bytes",
    "replace_linears",
    "set_cpu_kernels",
    "streaming",
]
