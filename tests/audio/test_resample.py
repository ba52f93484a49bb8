"""Streaming resampler and level helpers."""

from __future__ import annotations

import numpy as np
import pytest

from dsm.audio import (
    SAMPLE_RATE,
    AudioError,
    RmsMeter,
    StreamResampler,
    is_silent,
    resample,
    rms,
    rms_dbfs,
)


def _push_random_chunks(rs: StreamResampler, x: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out, i = [], 0
    while i < x.shape[-1]:
        n = int(rng.integers(0, 3000))
        out.append(rs.push(x[..., i : i + n]))
        i += n
    out.append(rs.flush())
    return np.concatenate(out)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_streaming_equals_one_shot(rate: int) -> None:
    x = np.random.default_rng(rate).standard_normal(2 * rate).astype(np.float32) * 0.1
    streamed = _push_random_chunks(StreamResampler(rate), x)
    one_shot = resample(x, rate)
    assert one_shot.shape[0] == round(2 * SAMPLE_RATE)
    assert streamed.shape == one_shot.shape
    np.testing.assert_allclose(streamed, one_shot, atol=1e-6)


def test_passthrough_and_stereo() -> None:
    x = np.random.default_rng(1).standard_normal((2, 5000)).astype(np.float32)
    rs = StreamResampler(SAMPLE_RATE)
    assert rs.passthrough
    out = _push_random_chunks(rs, x)
    np.testing.assert_allclose(out, x.mean(axis=0), atol=1e-7)
    assert rs.samples_in == rs.samples_out == 5000


def test_int16_input_and_counters() -> None:
    rs = StreamResampler(16000)
    pcm = (np.sin(np.arange(1600) / 5.0) * 20000).astype(np.int16)
    out = np.concatenate([rs.push(pcm), rs.flush()])
    assert out.shape == (2400,) and np.abs(out).max() < 1.0
    assert rs.samples_in == 1600 and rs.samples_out == 2400


def test_lifecycle_errors() -> None:
    rs = StreamResampler(48000)
    rs.push(np.zeros(480, np.float32))
    rs.flush()
    with pytest.raises(RuntimeError, match="reset"):
        rs.push(np.zeros(10, np.float32))
    with pytest.raises(RuntimeError, match="twice"):
        rs.flush()
    rs.reset()
    assert rs.push(np.zeros(4800, np.float32)).dtype == np.float32
    with pytest.raises(AudioError, match="NaN"):
        rs.push(np.array([0.0, np.nan], np.float32))
    with pytest.raises(AudioError, match="shape"):
        rs.push(np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="in_rate"):
        StreamResampler(0)


def test_levels() -> None:
    assert rms(np.zeros(0)) == 0.0 and is_silent(np.zeros(100))
    sine = np.sin(np.linspace(0, 200 * np.pi, 24000)).astype(np.float32)
    assert rms_dbfs(sine) == pytest.approx(-3.01, abs=0.05)
    assert not is_silent(0.01 * sine)  # about -43 dBFS: quiet speech
    assert is_silent(1e-4 * sine)  # about -83 dBFS
    meter = RmsMeter()
    assert meter.is_silent() and meter.rms == 0.0
    for chunk in np.split(0.5 * sine, 10):
        meter.push(chunk)
    assert meter.rms == pytest.approx(rms(0.5 * sine), rel=1e-6)
    assert meter.peak == pytest.approx(0.5, abs=1e-3) and not meter.is_silent()


def test_sample_rate_matches_mimi() -> None:
    mimi = pytest.importorskip("dsm.mimi")
    assert mimi.SAMPLE_RATE == SAMPLE_RATE
    from dsm.audio import FRAME_SIZE

    assert mimi.FRAME_SIZE == FRAME_SIZE
