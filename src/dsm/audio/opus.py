"""Ogg Opus (RFC 7845) streamed both ways: libopus through PyAV, Ogg pages from :mod:`.ogg`.

:class:`OggOpusEncoder` is what Kyutai's TTS server sends for ``format=OggOpus``: a header
(``OpusHead`` and ``OpusTags`` pages) first, then, for every chunk of pcm, one page per Opus
packet, written as soon as the packet exists (40 ms packets of 24 kHz mono, VoIP mode, as
upstream). Differences from upstream, on purpose, all within the spec: granule positions count
48 kHz samples and the pre-skip is the encoder's real look-ahead (upstream writes 24 kHz counts
and a fixed 3840, so decoders drop 80 ms of audio), and :meth:`~OggOpusEncoder.finish` ends the
stream with an EOS page whose granule trims the padding, so a saved stream decodes to exactly
the pcm that went in.

:class:`OggOpusDecoder` reads such a stream in pieces of any size (e.g. one WebSocket message
each) and returns 24 kHz mono float32 as the packets complete.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from typing import Any

import av
import numpy as np

from dsm.audio.checks import as_float32, to_mono
from dsm.audio.ogg import OggError, OggPacketReader, OggPageWriter
from dsm.audio.resample import SAMPLE_RATE, StreamResampler

__all__ = ["OPUS_RATE", "OggOpusDecoder", "OggOpusEncoder", "opus_available"]

OPUS_RATE = 48000  # Ogg Opus granules and pre-skip always count 48 kHz samples (RFC 7845 §4)
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)  # input rates libopus accepts
OPUS_FRAME_MS = 40  # upstream's packet size: 960 samples at 24 kHz, two per 80 ms TTS frame
OPUS_BITRATE = 32000  # bits/s; speech at 24 kHz (upstream leaves libopus's automatic ~25 kb/s)
OGG_SERIAL = 42  # the logical stream's serial number (the one upstream's server uses)
VENDOR = b"dsm"
_CODEC = "libopus"


def opus_available() -> bool:
    """Whether this PyAV build has the libopus encoder and decoder."""
    try:
        av.codec.Codec(_CODEC, "w")
        av.codec.Codec(_CODEC, "r")
    except (av.FFmpegError, ValueError):
        return False
    return True


def av_frame(pcm: np.ndarray, sample_rate: int, pts: int) -> av.AudioFrame | None:
    """Mono float ``pcm [S]`` as a PyAV frame starting at sample ``pts`` (None when empty)."""
    samples = np.ascontiguousarray(np.asarray(pcm, dtype=np.float32).reshape(1, -1))
    if samples.shape[1] == 0:
        return None
    frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = pts
    frame.time_base = Fraction(1, sample_rate)
    return frame


def _opus_tags(vendor: bytes) -> bytes:
    return b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)


def _opus_head(channels: int, pre_skip: int, input_rate: int) -> bytes:
    # version 1, output gain 0, channel mapping family 0 (mono or stereo, RFC 7845 §5.1)
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, input_rate, 0, 0)


class OggOpusEncoder:
    """Streaming mono Ogg Opus encoder: :meth:`header`, then :meth:`encode` per chunk, then
    :meth:`finish`; each returns the bytes of complete Ogg pages, ready to send."""

    content_type = "audio/ogg"

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        *,
        bitrate: int = OPUS_BITRATE,
        frame_ms: int = OPUS_FRAME_MS,
        serial: int = OGG_SERIAL,
    ) -> None:
        if sample_rate not in OPUS_RATES:
            raise ValueError(f"Opus encodes {OPUS_RATES} Hz audio, not {sample_rate} Hz")
        codec: Any = av.CodecContext.create(_CODEC, "w")
        codec.sample_rate = sample_rate
        codec.layout = "mono"
        codec.format = "flt"
        codec.bit_rate = bitrate
        codec.time_base = Fraction(1, sample_rate)
        codec.options = {"application": "voip", "frame_duration": str(frame_ms)}
        codec.open()
        self._codec = codec
        self.sample_rate = sample_rate
        self._scale = OPUS_RATE // sample_rate  # 48 kHz samples per input sample
        head = bytes(codec.extradata or b"")
        if not head.startswith(b"OpusHead"):
            head = _opus_head(1, 0, sample_rate)
        self.pre_skip = struct.unpack_from("<H", head, 10)[0]  # 48 kHz samples
        self.frame_samples = int(codec.frame_size)  # per packet, input rate
        self._head = head
        self._pages = OggPageWriter(serial)
        self.samples_in = 0
        self._packets = 0
        self._header_written = False

    def header(self) -> bytes:
        """The ``OpusHead`` page then the ``OpusTags`` page (the stream's first bytes)."""
        if self._header_written:
            raise RuntimeError("the Ogg Opus header was already written")
        self._header_written = True
        return self._pages.page([self._head], 0) + self._pages.page([_opus_tags(VENDOR)], 0)

    def encode(self, pcm: np.ndarray) -> bytes:
        """Pages for the packets that ``pcm`` (mono ``[S]``, float in [-1, 1]) completes."""
        if not self._header_written:
            raise RuntimeError("write the header() before the audio")
        frame = av_frame(pcm, self.sample_rate, self.samples_in)
        if frame is None:
            return b""
        self.samples_in += frame.samples
        return self._write(self._codec.encode(frame), final=False)

    def finish(self) -> bytes:
        """The last pages: the encoder's look-ahead flushed, on an end-of-stream page."""
        if not self._header_written:
            raise RuntimeError("write the header() before finishing the stream")
        packets = []
        if self.samples_in == 0:
            # No audio at all: a stream needs a packet; the final granule says it is empty (some
            # decoders, FFmpeg's, still play its 40 ms of silence).
            silence = np.zeros((1, self.frame_samples), dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(silence, format="flt", layout="mono")
            frame.sample_rate, frame.pts = self.sample_rate, 0
            packets = list(self._codec.encode(frame))
        packets += self._codec.encode(None)
        return self._write(packets, final=True)

    def _write(self, packets: list[Any], *, final: bool) -> bytes:
        out = []
        for i, packet in enumerate(packets):
            self._packets += 1
            last = final and i == len(packets) - 1
            # Granule: 48 kHz samples decoded so far (pre-skip included); the last page's
            # granule says where the real audio ends, so decoders trim the flush padding.
            granule = self._packets * self.frame_samples * self._scale
            if last:
                granule = min(granule, self.pre_skip + self.samples_in * self._scale)
            out.append(self._pages.page([bytes(packet)], granule, eos=last))
        return b"".join(out)


class OggOpusDecoder:
    """Incremental Ogg Opus decoder: ``push(bytes)`` -> mono float32 at ``sample_rate``.

    Accepts mono or stereo streams (stereo is averaged) at any Opus rate; the pre-skip is
    dropped. The end trimming of the last page is not applied (a few ms of codec padding may
    remain at the very end). Invalid data raises :class:`~dsm.audio.ogg.OggError`.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate
        self._reader = OggPacketReader()
        self._codec: Any = None
        self._resampler = StreamResampler(OPUS_RATE, sample_rate)
        self._tags_seen = False
        self.samples_out = 0

    def push(self, data: bytes) -> np.ndarray:
        """Feed bytes of the stream; returns the audio they complete (possibly empty)."""
        pieces = [self._decode(packet.data) for packet in self._reader.push(data)]
        pieces = [p for p in pieces if p.size]
        if not pieces:
            return np.zeros(0, dtype=np.float32)
        out = self._resampler.push(np.concatenate(pieces))
        self.samples_out += out.shape[0]
        return out

    def flush(self) -> np.ndarray:
        """End of input: the samples still held by the resampler."""
        out = self._resampler.flush()
        self.samples_out += out.shape[0]
        return out

    def _decode(self, packet: bytes) -> np.ndarray:
        empty = np.zeros(0, dtype=np.float32)
        if self._codec is None:
            self._codec = self._open(packet)
            return empty
        if not self._tags_seen and packet.startswith(b"OpusTags"):
            self._tags_seen = True
            return empty
        self._tags_seen = True
        try:
            frames = self._codec.decode(av.Packet(packet))
        except av.FFmpegError as exc:
            raise OggError(f"invalid Opus packet in the Ogg stream ({exc})") from None
        parts = []
        for frame in frames:
            data = as_float32(frame.to_ndarray())
            C = len(frame.layout.channels)
            if not frame.format.is_planar and C > 1:
                data = data.reshape(-1, C).T  # packed [1, S*C] -> [C, S]
            parts.append(to_mono(data, "decoded Opus"))
        return np.concatenate(parts) if parts else empty

    @staticmethod
    def _open(head: bytes) -> Any:
        if not head.startswith(b"OpusHead") or len(head) < 19:
            raise OggError("the Ogg stream is not Opus (its first packet is not an OpusHead)")
        channels, mapping = head[9], head[18]
        if channels not in (1, 2) or mapping != 0:
            raise OggError(
                f"only mono or stereo Opus is supported (got {channels} channels, "
                f"mapping family {mapping})"
            )
        codec: Any = av.CodecContext.create(_CODEC, "r")
        codec.sample_rate = OPUS_RATE
        codec.layout = "mono" if channels == 1 else "stereo"
        codec.extradata = head  # the decoder takes channels and pre-skip from it
        try:
            codec.open()
        except av.FFmpegError as exc:
            raise OggError(f"cannot decode this Opus stream ({exc})") from None
        return codec
