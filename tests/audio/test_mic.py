"""Microphone capture with a fake sounddevice module (no audio device needed)."""

from __future__ import annotations

import sys
import threading
import types
from typing import Any

import numpy as np
import pytest

from dsm.audio import SAMPLE_RATE
from dsm.audio.mic import (
    Microphone,
    MicrophoneError,
    import_sounddevice,
    microphone,
    open_microphone,
)
from tests.audio.synth import peak_frequency


class _PortAudioError(Exception):
    pass


def _fake_sounddevice(*, rate_ok: bool, has_input: bool = True) -> types.ModuleType:
    sd = types.ModuleType("sounddevice")
    sd.PortAudioError = _PortAudioError  # type: ignore[attr-defined]
    opened: dict[str, Any] = {}

    def query_devices(device: Any = None, kind: str | None = None) -> dict[str, Any]:
        if not has_input:
            raise _PortAudioError("Error querying device -1")
        return {"name": "fake mic", "max_input_channels": 2, "default_samplerate": 48000.0}

    def check_input_settings(**kwargs: Any) -> None:
        if not rate_ok:
            raise _PortAudioError("Invalid sample rate")

    class InputStream:
        def __init__(self, *, samplerate: int, blocksize: int, callback: Any, **kw: Any) -> None:
            opened.update(samplerate=samplerate, blocksize=blocksize, **kw)
            self.rate, self.blocksize, self.callback = samplerate, blocksize, callback
            self.stop_event = threading.Event()
            self.thread = threading.Thread(target=self._run, daemon=True)

        def _run(self) -> None:
            n = 0
            while not self.stop_event.is_set() and n < self.rate * 3:
                t = (n + np.arange(self.blocksize)) / self.rate
                block = (0.3 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)[:, None]
                self.callback(block, self.blocksize, None, None)
                n += self.blocksize

        def start(self) -> None:
            self.thread.start()

        def stop(self) -> None:
            self.stop_event.set()
            self.thread.join()

        def close(self) -> None:
            opened["closed"] = True

    sd.query_devices = query_devices  # type: ignore[attr-defined]
    sd.check_input_settings = check_input_settings  # type: ignore[attr-defined]
    sd.InputStream = InputStream  # type: ignore[attr-defined]
    sd.opened = opened  # type: ignore[attr-defined]
    return sd


def test_missing_sounddevice_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(MicrophoneError, match=r"pip install 'dsm\[mic\]'"):
        import_sounddevice()
    with pytest.raises(MicrophoneError, match="sounddevice"), Microphone():
        pass


def test_no_input_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        sys.modules, "sounddevice", _fake_sounddevice(rate_ok=True, has_input=False)
    )
    with pytest.raises(MicrophoneError, match="no usable default input device"):
        Microphone().open()


def test_iterating_before_open_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="with"):
        next(iter(Microphone()))


@pytest.mark.parametrize("rate_ok", [True, False])
def test_chunks_are_24k_float32(monkeypatch: pytest.MonkeyPatch, rate_ok: bool) -> None:
    sd = _fake_sounddevice(rate_ok=rate_ok)
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    chunks = []
    assert open_microphone is microphone
    with microphone(chunk_samples=1920) as mic:
        assert mic.device_rate == (SAMPLE_RATE if rate_ok else 48000)
        for chunk in mic:
            chunks.append(chunk)
            if len(chunks) == 20:
                break
    assert sd.opened["closed"] and sd.opened["dtype"] == "float32"  # type: ignore[attr-defined]
    assert all(c.shape == (1920,) and c.dtype == np.float32 for c in chunks)
    audio = np.concatenate(chunks)
    assert peak_frequency(audio[4800:], SAMPLE_RATE) == pytest.approx(1000.0, abs=15.0)
    assert np.abs(audio[4800:]).max() == pytest.approx(0.3, rel=0.05)
