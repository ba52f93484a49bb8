"""A terminal progress bar measured in audio seconds, for long transcriptions and evaluations.

It shows audio done / total, the real-time factor (audio seconds per wall second) and the ETA,
over every input; as each input finishes, one line gives its own audio length and real-time
factor. Everything goes to stderr, and nothing at all when disabled (not a terminal, --quiet).
"""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["AudioProgress"]


class AudioProgress:
    """Progress over inputs of known (or unknown: ``None``) durations in seconds."""

    def __init__(
        self, names: list[str], durations: list[float | None], *, enabled: bool, desc: str
    ) -> None:
        self.names = names
        self.durations = durations
        self.enabled = enabled
        self._done = [0.0] * len(names)
        self._started: dict[int, float] = {}
        self._finished = 0
        known = [d for d in durations if d is not None]
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=round(sum(known), 1) if len(known) == len(durations) else None,
                unit="s",
                desc=desc,
                file=sys.stderr,
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s audio "
                "[{elapsed}<{remaining}{postfix}]"
                if len(known) == len(durations)
                else "{desc}: {n:.1f} s audio [{elapsed}{postfix}]",
            )
        self._clock = time.monotonic()

    def _limit(self, index: int, seconds: float) -> float:
        total = self.durations[index]
        return seconds if total is None else min(seconds, total)

    def advance(self, index: int, seconds: float) -> None:
        """Input ``index`` has been heard up to ``seconds`` (never goes back)."""
        self._started.setdefault(index, time.monotonic())
        seconds = self._limit(index, seconds)
        gain = seconds - self._done[index]
        if gain <= 0:
            return
        self._done[index] = seconds
        if self._bar is not None:
            self._bar.update(gain)
            self._postfix()

    def finish(self, index: int, seconds: float | None = None) -> None:
        """Input ``index`` is done (``seconds``: its real length, when known only now)."""
        if seconds is not None and self.durations[index] is None:
            self.durations[index] = seconds
        total = self.durations[index]
        self.advance(index, total if total is not None else self._done[index])
        self._finished += 1
        if self._bar is not None and len(self.names) > 1:
            wall = time.monotonic() - self._started.get(index, self._clock)
            rtf = f", {self._done[index] / wall:.1f}x real time" if wall > 0 else ""
            self._bar.write(
                f"{self.names[index]}: {self._done[index]:.1f} s of audio{rtf}", file=sys.stderr
            )
            self._postfix()

    def _postfix(self) -> None:
        wall = time.monotonic() - self._clock
        done = sum(self._done)
        rtf = f"{done / wall:.1f}x real time" if wall > 0 else ""
        files = f", {self._finished}/{len(self.names)} done" if len(self.names) > 1 else ""
        self._bar.set_postfix_str(rtf + files, refresh=False)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
