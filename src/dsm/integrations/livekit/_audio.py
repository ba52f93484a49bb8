"""Sample conversions between LiveKit's audio frames (int16) and Kyutai's protocol (float32).

Both directions use the scale 32768, so a float the server sends maps to the nearest int16 and
an int16 comes back as exactly ``value / 32768``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["float_to_int16", "int16_to_float"]

_SCALE = 32768.0


def int16_to_float(data: bytes | memoryview, num_channels: int = 1) -> np.ndarray:
    """Interleaved int16 samples as mono float32 in [-1, 1) (channels averaged)."""
    samples = np.frombuffer(data, dtype=np.int16).astype(np.float32) / _SCALE
    if num_channels > 1:
        samples = samples.reshape(-1, num_channels).mean(axis=1, dtype=np.float32)
    return samples


def float_to_int16(pcm: np.ndarray) -> np.ndarray:
    """float32 samples as int16, rounded to the nearest value and clipped to int16's range."""
    scaled = np.rint(np.asarray(pcm, dtype=np.float32) * _SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int16)
