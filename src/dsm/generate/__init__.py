"""Generation policy: delays, sampling, CFG, hooks and per-slot streaming state."""

from dsm.generate.delay_ring import DelayRing
from dsm.generate.lmgen import StepOutput, StreamingGenerator
from dsm.generate.sampling import SlotSampler, greedy_tokens, resolve_max_top_k, sample_tokens

__all__ = [
    "DelayRing",
    "SlotSampler",
    "StepOutput",
    "StreamingGenerator",
    "greedy_tokens",
    "resolve_max_top_k",
    "sample_tokens",
]
