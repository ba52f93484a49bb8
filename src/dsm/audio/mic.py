"""Microphone capture as 24 kHz mono float32 chunks (sounddevice/PortAudio, imported lazily).

Usage::

    with Microphone() as mic:
        for chunk in mic:  # float32 [1920] at 24 kHz, until mic.close() or Ctrl-C
            session.push(chunk)

The device is opened at 24 kHz when it supports it, otherwise at its default rate, and the audio
is resampled with :class:`~dsm.audio.resample.StreamResampler`. PortAudio delivers blocks on its
own thread into a bounded queue; when the consumer falls behind, the oldest blocks are dropped
and counted in :attr:`Microphone.dropped_blocks` rather than letting latency grow without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from dsm.audio.decode import FRAME_SIZE
from dsm.audio.resample import SAMPLE_RATE, StreamResampler
from dsm.errors import DsmError, MissingExtraError
from dsm.extras import install_hint

__all__ = [
    "Microphone",
    "MicrophoneError",
    "import_sounddevice",
    "microphone",
    "open_microphone",
]

_log = logging.getLogger(__name__)

_QUEUE_SECONDS = 10.0  # capture kept while the consumer is busy, before dropping
_POLL_SECONDS = 0.1  # queue wait, so Ctrl-C and close() are noticed promptly


class MicrophoneError(DsmError, RuntimeError):
    """No microphone support (sounddevice/PortAudio missing) or no usable input device."""


class MissingSounddeviceError(MicrophoneError, MissingExtraError):
    """The ``sounddevice`` package (``dsm[mic]``) is not installed."""


def import_sounddevice() -> ModuleType:
    """Import ``sounddevice`` or raise :class:`MicrophoneError` saying how to install it."""
    try:
        import sounddevice
    except ImportError as exc:
        raise MissingSounddeviceError(
            f"the microphone and the sound card need the sounddevice package: {install_hint('mic')}"
        ) from exc
    except OSError as exc:  # sounddevice is installed but the PortAudio library is not
        raise MicrophoneError(
            f"sounddevice could not load PortAudio ({exc}); install the PortAudio library "
            "(e.g. `apt install libportaudio2` or `brew install portaudio`)"
        ) from exc
    return sounddevice


class Microphone:
    """Context manager and iterator over 24 kHz float32 mono chunks from an input device.

    ``device`` is a sounddevice device index or name substring (None = system default).
    ``chunk_samples`` is the size of every yielded chunk at 24 kHz (default one 80 ms frame).
    """

    def __init__(
        self,
        *,
        device: int | str | None = None,
        chunk_samples: int = FRAME_SIZE,
        channels: int = 1,
    ) -> None:
        if chunk_samples <= 0:
            raise ValueError(f"chunk_samples must be positive, got {chunk_samples}")
        self.device = device
        self.chunk_samples = chunk_samples
        self.channels = channels
        self.device_rate = SAMPLE_RATE
        self.dropped_blocks = 0
        self.overflows = 0
        self._stream: Any = None
        self._queue: queue.Queue[np.ndarray] = queue.Queue()
        self._closed = threading.Event()
        self._resampler: StreamResampler | None = None
        self._pending = np.zeros(0, dtype=np.float32)

    def _pick_rate(self, sd: ModuleType) -> int:
        try:
            info = sd.query_devices(self.device, kind="input")
        except (ValueError, sd.PortAudioError) as exc:
            which = (
                "default input device" if self.device is None else f"input device {self.device!r}"
            )
            raise MicrophoneError(
                f"no usable {which} ({exc}). Plug in a microphone, or pick one by index or name "
                "from `python -m sounddevice`."
            ) from exc
        if int(info.get("max_input_channels", 0)) < self.channels:
            raise MicrophoneError(
                f"device {info.get('name', self.device)!r} has no input channels; "
                "choose an input device from `python -m sounddevice`"
            )
        try:
            sd.check_input_settings(
                device=self.device, channels=self.channels, dtype="float32", samplerate=SAMPLE_RATE
            )
            return SAMPLE_RATE
        except Exception:  # PortAudio reports unsupported settings with various exception types
            return int(info["default_samplerate"])

    def open(self) -> Microphone:
        """Start capturing (called by ``with``)."""
        if self._stream is not None:
            return self
        sd = import_sounddevice()
        self.device_rate = self._pick_rate(sd)
        self._resampler = StreamResampler(self.device_rate, SAMPLE_RATE)
        self._queue = queue.Queue(
            maxsize=max(1, int(_QUEUE_SECONDS * self.device_rate / self.chunk_samples))
        )
        self._closed.clear()
        blocksize = max(1, round(self.chunk_samples * self.device_rate / SAMPLE_RATE))
        try:
            self._stream = sd.InputStream(
                device=self.device,
                channels=self.channels,
                samplerate=self.device_rate,
                dtype="float32",
                blocksize=blocksize,
                callback=self._callback,
            )
            self._stream.start()
        except Exception as exc:
            self._stream = None
            raise MicrophoneError(f"could not open the microphone: {exc}") from exc
        _log.info("microphone open at %d Hz (resampled to %d Hz)", self.device_rate, SAMPLE_RATE)
        return self

    def _callback(self, indata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        # Runs on PortAudio's thread: copy, enqueue, never block.
        if status:
            self.overflows += 1
        block = np.array(indata, dtype=np.float32, copy=True)
        while True:
            try:
                self._queue.put_nowait(block)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped_blocks += 1
                except queue.Empty:
                    pass

    def close(self) -> None:
        """Stop capturing; an iteration in progress ends after the chunks already queued."""
        self._closed.set()
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.stop()
            stream.close()
        if self.dropped_blocks:
            _log.warning("microphone: dropped %d block(s), consumer too slow", self.dropped_blocks)

    def __enter__(self) -> Microphone:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._resampler is None:
            raise RuntimeError(
                "use the Microphone in a `with` block (or call open()) before iterating"
            )
        resampler = self._resampler
        while True:
            try:
                block = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self._closed.is_set():
                    return
                continue
            mono = block.mean(axis=1, dtype=np.float32) if block.ndim == 2 else block
            self._pending = np.concatenate([self._pending, resampler.push(mono)])
            while self._pending.shape[0] >= self.chunk_samples:
                chunk = self._pending[: self.chunk_samples]
                self._pending = self._pending[self.chunk_samples :]
                yield chunk


def microphone(*, device: int | str | None = None, chunk_samples: int = FRAME_SIZE) -> Microphone:
    """A :class:`Microphone` to use as ``with microphone() as mic: for chunk in mic: ...``."""
    return Microphone(device=device, chunk_samples=chunk_samples)


open_microphone = microphone
