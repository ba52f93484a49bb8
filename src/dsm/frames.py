"""The audio format every DSM checkpoint shares (Mimi's): the one definition of these numbers.

Dependency-free, so light modules (audio I/O, clients) read them without importing torch.
"""

from __future__ import annotations

__all__ = ["FRAME_RATE", "FRAME_SIZE", "SAMPLE_RATE"]

SAMPLE_RATE = 24000  # Hz, mono
FRAME_RATE = 12.5  # code frames per second
FRAME_SIZE = int(SAMPLE_RATE / FRAME_RATE)  # 1920 samples = 80 ms
