"""Streaming encoders: every format decodes back (PyAV) to the audio that went in.

Figures on this test signal (speech-like noise bursts, 2 s at 24 kHz), decoded and aligned:
SNR pcm/wav/flac > 70 dB (16-bit), mp3 ~18 dB, aac ~20 dB, opus (VoIP mode, 32 kb/s) ~9 dB
with correlation ~0.94. Opus in VoIP mode reshapes the waveform on purpose (high-pass, formant
emphasis), hence its low SNR; the thresholds below sit well under these figures.
"""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import pytest

from dsm.audio.encode import available_formats, make_encoder
from dsm.audio.ogg import OggPacketReader
from dsm.audio.opus import OggOpusDecoder, OggOpusEncoder
from dsm.audio.resample import resample
from tests.helpers.reference_mimi import speech_like

RATE = 24000
FRAME = 1920


@pytest.fixture(scope="module")
def signal() -> np.ndarray:
    x = speech_like(2.0, seed=3)[0, 0].numpy().astype(np.float32)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Whole encoded stream -> (mono float32 at 24 kHz, the stream's own sample rate)."""
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    rate = frames[0].sample_rate
    parts = []
    for frame in frames:
        x = frame.to_ndarray().astype(np.float32)
        if frame.format.name.startswith("s16"):
            x /= 32768
        C = len(frame.layout.channels)
        parts.append(x.reshape(C, -1).mean(0) if frame.format.is_planar else x.reshape(-1))
    return resample(np.concatenate(parts), rate, RATE), rate


def aligned(x: np.ndarray, y: np.ndarray, max_lag: int = 2400) -> tuple[int, float, float]:
    """(lag of y behind x, SNR dB, correlation) over the overlap, edges trimmed."""
    n = min(len(x), len(y) - max_lag) - max_lag
    ref = x[max_lag:n]
    window = y[: n + max_lag]
    size = 1 << int(np.ceil(np.log2(len(window) + len(ref))))
    full = np.fft.irfft(np.fft.rfft(window, size) * np.conj(np.fft.rfft(ref, size)), size)
    lag = int(np.argmax(full[: 2 * max_lag])) - max_lag  # full[k] = <ref, window[k:]>
    out = y[max_lag + lag : n + lag]
    snr = 10 * np.log10(np.sum(ref**2) / np.sum((ref - out) ** 2))
    return lag, float(snr), float(np.corrcoef(ref, out)[0, 1])


def test_ogg_opus_stream_layout_and_exact_length(signal: np.ndarray) -> None:
    encoder = OggOpusEncoder()
    header = encoder.header()
    chunks = [encoder.encode(signal[i : i + FRAME]) for i in range(0, signal.shape[0], FRAME)]
    tail = encoder.finish()
    reader = OggPacketReader()
    head, tags = reader.push(header)
    assert head.data.startswith(b"OpusHead") and head.bos and tags.data.startswith(b"OpusTags")
    channels, pre_skip, input_rate = struct.unpack_from("<BHI", head.data, 9)
    assert (channels, input_rate) == (1, RATE) and 0 < pre_skip < 1000
    # Streamed as produced: every 80 ms chunk completes two 40 ms packets, one page each.
    for i, chunk in enumerate(chunks):
        packets = reader.push(chunk)
        assert chunk.count(b"OggS") == 2 and len(packets) == 2
        assert [p.granule for p in packets] == [(4 * i + 2) * 960, (4 * i + 4) * 960]
    (last,) = reader.push(tail)
    assert last.eos and last.granule == pre_skip + 2 * signal.shape[0]
    data = header + b"".join(chunks) + tail
    decoded, rate = decode(data)
    assert rate == 48000 and decoded.shape == signal.shape  # the EOS granule trims the padding
    lag, snr, corr = aligned(signal, decoded)
    assert lag == 0 and corr > 0.85 and snr > 5
    # The incremental decoder (STT input) gives the same audio from pieces of any size.
    decoder = OggOpusDecoder()
    pieces = [decoder.push(data[i : i + 333]) for i in range(0, len(data), 333)]
    streamed = np.concatenate([*pieces, decoder.flush()])
    assert abs(streamed.shape[0] - signal.shape[0]) <= 960
    assert aligned(signal, streamed)[2] > 0.85


def test_ogg_opus_without_audio_is_a_valid_empty_stream() -> None:
    encoder = OggOpusEncoder()
    data = encoder.header() + encoder.finish()
    packets = OggPacketReader().push(data)
    assert packets[-1].eos and packets[-1].granule == encoder.pre_skip
    with av.open(io.BytesIO(data)) as container:  # FFmpeg ignores the trim of a lone page
        assert sum(f.samples for f in container.decode(audio=0)) <= 1920


@pytest.mark.parametrize("name", available_formats())
def test_format_streams_and_decodes_back(name: str, signal: np.ndarray) -> None:
    encoder = make_encoder(name)
    header = encoder.header()
    body = [encoder.encode(signal[i : i + FRAME]) for i in range(0, signal.shape[0], FRAME)]
    tail = encoder.finish()
    # Streamed: bytes come out long before the end (a codec may hold one block back).
    assert sum(len(b) > 0 for b in body[: len(body) // 2]) >= len(body) // 2 - 2
    data = header + b"".join(body) + tail
    if name == "pcm":
        decoded = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767
    else:
        decoded, rate = decode(data)
        assert rate == (48000 if name == "opus" else RATE)
    lossless = name in ("pcm", "wav", "flac")
    if lossless or name == "opus":
        assert decoded.shape == signal.shape
    else:  # mp3/aac: encoder delay and padding, at most a few frames
        assert signal.shape[0] <= decoded.shape[0] <= signal.shape[0] + 4 * 1152
    lag, snr, corr = aligned(signal, decoded)
    if lossless:
        assert lag == 0 and snr > 70
    elif name == "opus":
        assert lag == 0 and corr > 0.85
    else:
        assert 0 <= lag <= 1200 and snr > 10 and corr > 0.95
    assert make_encoder(name).content_type.startswith("audio/")


def test_unknown_format_lists_the_supported_ones() -> None:
    with pytest.raises(ValueError, match="mp3") as info:
        make_encoder("ogg")
    assert "'ogg' is not supported" in str(info.value)
    assert {"wav", "pcm"} <= set(available_formats())
