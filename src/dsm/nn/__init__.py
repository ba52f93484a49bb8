"""Neural-network building blocks: streaming state, attention with KV caches, transformers."""

from __future__ import annotations

from .streaming import StreamingControl, StreamingModule, StreamingState, streaming
from .transformer import StreamingTransformer, StreamingTransformerLayer

__all__ = [
    "StreamingControl",
    "StreamingModule",
    "StreamingState",
    "StreamingTransformer",
    "StreamingTransformerLayer",
    "streaming",
]
