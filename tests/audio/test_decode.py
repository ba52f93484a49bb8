"""Decoding files and arrays to 24 kHz mono float32, whole and streamed."""

from __future__ import annotations

import io
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest

from dsm.audio import (
    FRAME_SIZE,
    SAMPLE_RATE,
    AudioError,
    AudioFileNotFoundError,
    audio_duration,
    audio_info,
    load_audio,
    resample,
    stream_audio,
)
from dsm.audio.decode import _decode_frames, _open
from tests.audio.synth import peak_frequency, tone, write_audio

SHARED = Path("/work/shared/audio")
SAMPLES = {"bria.mp3": 44.85, "loona.mp3": 1.05, "sample_fr_hibiki_crepes.mp3": 56.29}
needs_samples = pytest.mark.skipif(not SHARED.is_dir(), reason="shared audio samples not present")


def _native_mono(path: Path) -> tuple[np.ndarray, int]:
    container, name = _open(path)
    with container:
        pieces = list(_decode_frames(container, name))
    return np.concatenate([p for p, _ in pieces]), pieces[0][1]


@needs_samples
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_shipped_mp3_length_matches_duration(name: str) -> None:
    path = SHARED / name
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    duration = audio_duration(path)
    assert duration == pytest.approx(SAMPLES[name], abs=0.01)
    # Decoded length equals the container's duration to within one 80 ms frame.
    assert abs(audio.shape[0] - duration * SAMPLE_RATE) < FRAME_SIZE
    assert np.isfinite(audio).all() and 0.01 < np.abs(audio).max() <= 1.0
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.container) == (44100, 1, "mp3")


@needs_samples
def test_shipped_mp3_streaming_equals_whole_and_one_shot_resample() -> None:
    path = SHARED / "bria.mp3"
    whole = load_audio(path)
    chunks = list(stream_audio(path, chunk_samples=FRAME_SIZE * 5))
    assert all(c.shape[0] == FRAME_SIZE * 5 for c in chunks[:-1])
    assert 0 < chunks[-1].shape[0] <= FRAME_SIZE * 5
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
    native, rate = _native_mono(path)
    one_shot = resample(native, rate)
    assert one_shot.shape == whole.shape
    np.testing.assert_allclose(whole, one_shot, atol=1e-5)


@pytest.mark.parametrize("kind", ["wav", "flac", "ogg", "mp3"])
@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_generated_files_stereo_to_mono(tmp_path: Path, kind: str, rate: int) -> None:
    if kind == "ogg" and rate == 44100:
        pytest.skip("opus does not encode at 44.1 kHz")
    left = tone(440.0, 1.0, rate, amplitude=0.5)
    path = write_audio(tmp_path / f"tone.{kind}", np.stack([left, 0.5 * left]), rate)
    audio = load_audio(path)
    assert audio.dtype == np.float32
    assert abs(audio.shape[0] - SAMPLE_RATE) <= 2
    assert peak_frequency(audio, SAMPLE_RATE) == pytest.approx(440.0, abs=2.0)
    # Channels are averaged: (0.5 + 0.25) / 2 = 0.375 peak, within codec loss.
    steady = np.abs(audio[4000:20000]).max()
    assert steady == pytest.approx(0.375, rel=0.01 if kind in ("wav", "flac") else 0.1)
    assert audio_info(path).channels == 2


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_lossless_streaming_equals_one_shot(tmp_path: Path, rate: int) -> None:
    signal = np.random.default_rng(rate).uniform(-0.5, 0.5, 3 * rate).astype(np.float32)
    path = write_audio(tmp_path / "noise.f32.wav", signal, rate)
    streamed = np.concatenate(list(stream_audio(path, chunk_samples=1000)))
    np.testing.assert_allclose(streamed, resample(signal, rate), atol=1e-6)
    assert audio_duration(path) == pytest.approx(3.0)


def test_stream_is_incremental_with_bounded_memory(tmp_path: Path) -> None:
    seconds = 120
    path = write_audio(tmp_path / "long.flac", tone(300.0, seconds, 16000, 0.3), 16000)
    whole_bytes = seconds * SAMPLE_RATE * 4
    tracemalloc.start()
    try:
        total = 0
        for chunk in stream_audio(path, chunk_samples=FRAME_SIZE):
            total += chunk.shape[0]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == seconds * SAMPLE_RATE
    assert peak < whole_bytes / 10, f"streaming peak {peak} bytes vs whole file {whole_bytes}"


def test_bytes_and_file_objects(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "a.wav", tone(440.0, 0.5, 16000), 16000)
    expected = load_audio(path)
    np.testing.assert_array_equal(load_audio(path.read_bytes()), expected)
    with path.open("rb") as f:
        np.testing.assert_array_equal(load_audio(f), expected)
    np.testing.assert_array_equal(load_audio(io.BytesIO(path.read_bytes())), expected)
    np.testing.assert_array_equal(load_audio(str(path)), expected)


def test_missing_file() -> None:
    with pytest.raises(AudioFileNotFoundError, match=r"nope\.wav"):
        load_audio("/definitely/not/here/nope.wav")
    with pytest.raises(FileNotFoundError):
        audio_duration("/definitely/not/here/nope.wav")


def test_empty_and_non_audio_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty \(0 bytes\)"):
        load_audio(empty)
    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio at all\n" * 50)
    with pytest.raises(AudioError, match=r"notes\.mp3.*wav, flac, mp3"):
        load_audio(text)
    with pytest.raises(AudioError, match="directory"):
        load_audio(tmp_path)
    with pytest.raises(AudioError, match="empty"):
        load_audio(b"")


def test_zero_sample_file(tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    with wave.open(str(path), "wb") as w:  # a valid header with no frames
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(path)
    with pytest.raises(AudioError, match="no audio samples"):
        list(stream_audio(path))


def test_nan_in_file(tmp_path: Path) -> None:
    signal = tone(440.0, 0.5, 16000)
    signal[1234] = np.nan
    path = write_audio(tmp_path / "nan.f32.wav", signal, 16000)
    with pytest.raises(AudioError, match=r"NaN or infinite.*1234"):
        load_audio(path)


def test_arrays() -> None:
    x = tone(440.0, 1.0, 16000)
    y = load_audio(x, sample_rate=16000)
    assert y.shape == (SAMPLE_RATE,) and y.dtype == np.float32
    np.testing.assert_array_equal(load_audio(y, sample_rate=SAMPLE_RATE), y)
    stereo = np.stack([x, np.zeros_like(x)])
    np.testing.assert_allclose(load_audio(stereo, sample_rate=16000), 0.5 * y, atol=1e-6)
    pcm16 = (x * 32768).astype(np.int16)
    np.testing.assert_allclose(load_audio(pcm16, sample_rate=16000), y, atol=1e-4)
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(load_audio(torch.from_numpy(x), sample_rate=16000), y)


def test_array_errors(tmp_path: Path) -> None:
    x = tone(440.0, 0.1, 24000)
    with pytest.raises(ValueError, match="needs sample_rate"):
        load_audio(x)
    with pytest.raises(ValueError, match="only for pcm arrays"):
        load_audio(tmp_path / "a.wav", sample_rate=16000)
    with pytest.raises(AudioError, match=r"\[S, C\].*array\.T"):
        load_audio(np.stack([x, x]).T, sample_rate=24000)
    with pytest.raises(AudioError, match=r"\[1, 2, 2400\]"):
        load_audio(np.stack([x, x])[None], sample_rate=24000)
    with pytest.raises(AudioError, match="empty"):
        load_audio(np.zeros(0, np.float32), sample_rate=24000)
    bad = x.copy()
    bad[7] = np.inf
    with pytest.raises(AudioError, match="sample 7"):
        load_audio(bad, sample_rate=24000)
    with pytest.raises(ValueError, match="positive"):
        load_audio(x, sample_rate=0)
    with pytest.raises(ValueError, match="chunk_samples"):
        next(stream_audio(tmp_path / "a.wav", chunk_samples=0))
