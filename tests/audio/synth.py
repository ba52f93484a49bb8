"""Test signals and files written with PyAV (no external tools)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

# container suffix -> (codec, sample format)
CODECS = {
    "wav": ("pcm_s16le", "s16"),
    "flac": ("flac", "s16"),
    "ogg": ("libopus", "s16"),
    "mp3": ("libmp3lame", "fltp"),
    "f32.wav": ("pcm_f32le", "flt"),
}


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    """A float32 sine ``[S]``."""
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_audio(path: Path, audio: np.ndarray, rate: int, kind: str | None = None) -> Path:
    """Encode ``audio`` (float ``[S]`` or ``[C, S]``, in [-1, 1]) to ``path``."""
    kind = kind or path.name.split(".", 1)[1]
    codec, fmt = CODECS[kind]
    pcm = np.atleast_2d(audio).astype(np.float32)
    C = pcm.shape[0]
    layout = {1: "mono", 2: "stereo"}[C]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        stream.format = fmt
        frame_samples = 960
        for i in range(0, pcm.shape[1], frame_samples):
            block = pcm[:, i : i + frame_samples]
            if fmt == "s16":
                data = (np.clip(block, -1, 1) * 32767).astype(np.int16).T.reshape(1, -1)
            elif fmt == "flt":
                data = block.T.reshape(1, -1).copy()
            else:  # planar float
                data = np.ascontiguousarray(block)
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
            frame.sample_rate = rate
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def peak_frequency(audio: np.ndarray, rate: int) -> float:
    """Frequency (Hz) of the largest FFT bin of ``audio``."""
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.shape[0])))
    return float(np.argmax(spectrum) * rate / audio.shape[0])
