"""Generation policy: delays, sampling, CFG, hooks and per-slot streaming state."""

from dsm.generate.lmgen import StepOutput, StreamingGenerator
from dsm.generate.sampling import greedy_tokens, resolve_max_top_k, sample_tokens

__all__ = [
    "StepOutput",
    "StreamingGenerator",
    "greedy_tokens",
    "resolve_max_top_k",
    "sample_tokens",
]
