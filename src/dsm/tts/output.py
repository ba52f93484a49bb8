"""Where synthesized audio goes: a wav file (written as it comes), a pipe, or the sound card."""

from __future__ import annotations

import queue
import sys
import time
import wave
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from dsm.audio.encode import pcm16
from dsm.errors import DsmError
from dsm.mimi import FRAME_SIZE, SAMPLE_RATE

__all__ = ["AudioSink", "EncodedFileSink", "open_sink"]


class AudioSink:
    """Receives 24 kHz mono float32 audio in pieces."""

    def write(self, pcm: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish (flush, wait for playback)."""

    def __enter__(self) -> AudioSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WavSink(AudioSink):
    """A 16-bit wav file written incrementally (the header is fixed on close)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._wav = wave.open(str(self.path), "wb")  # noqa: SIM115 - closed in close()
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)

    def write(self, pcm: np.ndarray) -> None:
        self._wav.writeframes(pcm16(pcm))

    def close(self) -> None:
        self._wav.close()


class EncodedFileSink(AudioSink):
    """A compressed (or raw) audio file, encoded as the audio comes (:mod:`dsm.audio.encode`)."""

    def __init__(self, path: str | Path, fmt: str) -> None:
        from dsm.audio.encode import make_encoder

        try:
            self._encoder = make_encoder(fmt, SAMPLE_RATE)
        except ValueError as exc:
            raise DsmError(f"cannot write {path}: {exc}") from None
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._file.write(self._encoder.header())

    def write(self, pcm: np.ndarray) -> None:
        self._file.write(self._encoder.encode(np.asarray(pcm, dtype=np.float32)))

    def close(self) -> None:
        if not self._file.closed:
            self._file.write(self._encoder.finish())
            self._file.close()


class PipeSink(AudioSink):
    """Raw s16le mono 24 kHz to a binary stream (e.g. ``| ffplay -f s16le -ar 24000 -ac 1 -``)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def write(self, pcm: np.ndarray) -> None:
        self.stream.write(pcm16(pcm))
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class SpeakerSink(AudioSink):
    """Plays through the default output device (needs ``dsm[mic]``: sounddevice)."""

    def __init__(self) -> None:
        from dsm.audio.mic import import_sounddevice

        try:
            sd = import_sounddevice()
        except DsmError as exc:
            raise DsmError(f"cannot play audio: {exc}; or pipe it: -o - | aplay ...") from exc
        self._queue: queue.Queue[np.ndarray] = queue.Queue()
        self._pending = np.zeros(0, dtype=np.float32)
        self._stream: Any = sd.OutputStream(
            samplerate=SAMPLE_RATE,
            blocksize=FRAME_SIZE,
            channels=1,
            dtype="float32",
            callback=self._callback,
        )
        self._stream.start()

    def _callback(self, outdata: Any, frames: int, _time: Any, _status: Any) -> None:
        try:
            block = self._queue.get_nowait()
        except queue.Empty:
            outdata[:] = 0
            return
        outdata[: len(block), 0] = block[:frames]
        outdata[len(block) :] = 0

    def write(self, pcm: np.ndarray) -> None:
        data = np.concatenate([self._pending, np.asarray(pcm, dtype=np.float32)])
        whole = len(data) // FRAME_SIZE * FRAME_SIZE
        for start in range(0, whole, FRAME_SIZE):
            self._queue.put(data[start : start + FRAME_SIZE])
        self._pending = data[whole:]

    def close(self) -> None:
        if len(self._pending):
            self._queue.put(np.pad(self._pending, (0, FRAME_SIZE - len(self._pending))))
            self._pending = np.zeros(0, dtype=np.float32)
        while not self._queue.empty():
            time.sleep(0.05)
        time.sleep(2 * FRAME_SIZE / SAMPLE_RATE)
        self._stream.stop()
        self._stream.close()


def open_sink(target: str) -> AudioSink:
    """``-``: the sound card when stdout is a terminal, else raw s16le on stdout; otherwise a
    file of the type its suffix names (.wav, .mp3, .flac, .ogg/.opus, .aac, .pcm/.raw; any other
    suffix is refused before anything is written)."""
    from dsm.audio.encode import format_of_path

    if target == "-":
        if sys.stdout.isatty():
            return SpeakerSink()
        return PipeSink(sys.stdout.buffer)
    try:
        fmt = format_of_path(target)
    except ValueError as exc:
        raise DsmError(str(exc)) from None
    return WavSink(target) if fmt == "wav" else EncodedFileSink(target, fmt)
