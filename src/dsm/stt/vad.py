"""Semantic VAD: pause probabilities from the extra heads and an end-of-turn detector.

Checkpoints with extra heads (``kyutai/stt-1b-en_fr-candle``) give, every 80 ms, four
probabilities that the speaker is pausing, at horizons of 0.5, 1, 2 and 3 s (heads 0..3; index
0 of each head's softmax, model-spec §4.6). The end-of-turn detector smooths one head's
probability with an exponential moving average and fires once when it crosses the threshold;
it re-arms after the next word, as the upstream clients do.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PAUSE_HORIZONS_SECONDS", "VAD_CHECKPOINT", "EndOfTurnDetector", "VadOptions"]

PAUSE_HORIZONS_SECONDS = (0.5, 1.0, 2.0, 3.0)
VAD_CHECKPOINT = "kyutai/stt-1b-en_fr-candle"  # the published checkpoint with VAD heads


@dataclass(frozen=True)
class VadOptions:
    """End-of-turn settings: which head, the threshold, and EMA smoothing (1.0 = none)."""

    head: int = 2
    threshold: float = 0.5
    smoothing: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"VAD smoothing must be in (0, 1], got {self.smoothing}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"VAD threshold must be in [0, 1], got {self.threshold}")
        if self.head < 0:
            raise ValueError(f"VAD head must be >= 0, got {self.head}")


class EndOfTurnDetector:
    """Fires once per turn when the smoothed pause probability exceeds the threshold."""

    def __init__(self, options: VadOptions, num_heads: int) -> None:
        if options.head >= num_heads:
            raise ValueError(
                f"VAD head {options.head} does not exist: the checkpoint has {num_heads} heads "
                f"(0..{num_heads - 1})"
            )
        self.options = options
        self.level: float | None = None
        self.armed = False

    def on_word(self) -> None:
        """A word was heard: the next pause may end the turn."""
        self.armed = True

    def update(self, pause: list[float] | tuple[float, ...]) -> bool:
        """Feed one step's pause probabilities; True when the turn just ended."""
        value = float(pause[self.options.head])
        alpha = self.options.smoothing
        self.level = value if self.level is None else alpha * value + (1 - alpha) * self.level
        if self.armed and self.level > self.options.threshold:
            self.armed = False
            return True
        return False
