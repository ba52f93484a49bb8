"""Ogg pages: written pages read back (any split), FFmpeg's pages accepted, corruption caught."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from dsm.audio.ogg import OggError, OggPacketReader, OggPageWriter, ogg_crc


def _split(data: bytes, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    cuts = sorted(rng.integers(0, len(data), size=12).tolist())
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_pages_round_trip_in_any_split() -> None:
    rng = np.random.default_rng(0)
    # Lacing edge cases: empty, 255 multiples, and a packet spanning several pages.
    sizes = [19, 0, 1, 254, 255, 256, 510, 70000, 3]
    packets = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    writer = OggPageWriter(serial=7)
    pages = [
        writer.page([p], granule=i * 960, eos=i == len(packets) - 1) for i, p in enumerate(packets)
    ]
    assert writer.sequence > len(packets)  # the 70000-byte packet took more than one page
    data = b"".join(pages)
    for seed in range(3):
        reader = OggPacketReader()
        out = [packet for piece in _split(data, seed) for packet in reader.push(piece)]
        assert [p.data for p in out] == packets
        assert [p.granule for p in out] == [i * 960 for i in range(len(packets))]
        assert out[0].bos and not any(p.bos for p in out[1:])
        assert out[-1].eos and not any(p.eos for p in out[:-1])
        assert reader.serial == 7 and reader.ended
    with pytest.raises(RuntimeError, match="already ended"):
        writer.page([b"x"], 0)


def test_reads_ffmpeg_pages_and_rejects_corruption() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=24000, layout="mono")
        t = np.arange(24000) / 24000
        pcm = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="flt", layout="mono")
        frame.sample_rate = 24000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    data = buffer.getvalue()
    packets = OggPacketReader().push(data)  # FFmpeg's checksums agree with ours
    assert packets[0].data.startswith(b"OpusHead") and packets[1].data.startswith(b"OpusTags")
    assert len(packets) > 20 and packets[-1].eos
    corrupt = bytearray(data)
    corrupt[200] ^= 0x40
    with pytest.raises(OggError, match="checksum"):
        OggPacketReader().push(bytes(corrupt))
    with pytest.raises(OggError, match="not an Ogg stream"):
        OggPacketReader().push(b"RIFF....WAVEfmt " + bytes(40))
    assert ogg_crc(b"") == 0 and ogg_crc(b"OggS") != ogg_crc(b"OggT")
