"""The Ogg container (RFC 3533), written and read incrementally: pages in, packets out.

:class:`OggPageWriter` turns packets into pages, one call per page so a streaming encoder can
flush a page as soon as a packet is ready (what upstream's TTS server does for every Opus
packet). :class:`OggPacketReader` takes the bytes of one logical stream in pieces of any size
(e.g. one WebSocket message each) and returns the complete packets, joining those that continue
across pages. Only single-stream (unmultiplexed) Ogg is supported, which is what Ogg Opus
streams are in practice.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["OggError", "OggPacket", "OggPacketReader", "OggPageWriter", "ogg_crc"]

CAPTURE = b"OggS"
FLAG_CONTINUED = 0x01  # the page starts with the rest of the previous page's last packet
FLAG_BOS = 0x02  # first page of the logical stream
FLAG_EOS = 0x04  # last page of the logical stream
_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq, crc, n
MAX_SEGMENTS = 255
NO_GRANULE = -1  # granule of a page on which no packet ends


def _crc_table() -> list[int]:
    # CRC-32 with polynomial 0x04C11DB7, MSB first, initial value 0, no final xor (RFC 3533 §6).
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


_CRC_TABLE = _crc_table()


def ogg_crc(data: bytes) -> int:
    """The Ogg page checksum of ``data`` (a page whose CRC field is zero)."""
    crc = 0
    table = _CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ byte]
    return crc


class OggError(ValueError):
    """Bytes that are not a valid Ogg stream."""


class OggPageWriter:
    """Pages of one logical stream (``serial``), numbered in order, with their checksum."""

    def __init__(self, serial: int) -> None:
        self.serial = serial & 0xFFFFFFFF
        self.sequence = 0
        self.started = False
        self.ended = False

    def page(self, packets: list[bytes], granule: int, *, eos: bool = False) -> bytes:
        """Pages holding ``packets`` (usually one page; more if they exceed 255 segments).

        ``granule`` is the codec's position at the end of the last packet. The first page
        written gets the BOS flag; ``eos`` marks the last one.
        """
        if self.ended:
            raise RuntimeError("this Ogg stream already ended (EOS page written)")
        lacing: list[int] = []
        for packet in packets:
            lacing += [255] * (len(packet) // 255) + [len(packet) % 255]
        body = b"".join(packets)
        out = []
        continued = False
        while True:
            segments, lacing = lacing[:MAX_SEGMENTS], lacing[MAX_SEGMENTS:]
            size = sum(segments)
            chunk, body = body[:size], body[size:]
            last = not lacing
            # A page on which no packet ends (all segments 255, more follow) has no granule.
            ends_packet = any(value < 255 for value in segments)
            flags = (FLAG_CONTINUED if continued else 0) | (0 if self.started else FLAG_BOS)
            if eos and last:
                flags |= FLAG_EOS
            out.append(
                self._page(flags, granule if ends_packet or last else NO_GRANULE, segments, chunk)
            )
            self.started = True
            continued = bool(segments) and segments[-1] == 255
            if last:
                break
        self.ended = eos
        return b"".join(out)

    def _page(self, flags: int, granule: int, segments: list[int], body: bytes) -> bytes:
        header = _HEADER.pack(CAPTURE, 0, flags, granule, self.serial, self.sequence, 0,
                              len(segments))  # fmt: skip
        self.sequence += 1
        page = header + bytes(segments) + body
        crc = ogg_crc(page)
        return page[:22] + struct.pack("<I", crc) + page[26:]


@dataclass(frozen=True)
class OggPacket:
    """A complete packet, with the granule and flags of the page on which it ends."""

    data: bytes
    granule: int
    bos: bool
    eos: bool


class OggPacketReader:
    """Incremental Ogg demuxer of one logical stream: ``push(bytes)`` -> complete packets.

    Pages may be split across pushes anywhere. A page with a bad checksum, a page of another
    logical stream, or bytes that are not Ogg raise :class:`OggError`.
    """

    def __init__(self, max_buffer_bytes: int = 1 << 20) -> None:
        self.max_buffer_bytes = max_buffer_bytes
        self.serial: int | None = None
        self.pages = 0
        self.ended = False
        self._buffer = bytearray()
        self._partial = bytearray()  # a packet continued on the next page

    def push(self, data: bytes) -> list[OggPacket]:
        """Feed bytes; returns the packets completed by them (possibly none)."""
        self._buffer += data
        if len(self._buffer) > self.max_buffer_bytes:
            raise OggError(f"an Ogg page is larger than {self.max_buffer_bytes} bytes")
        packets: list[OggPacket] = []
        while True:
            page = self._next_page()
            if page is None:
                return packets
            packets += self._packets(*page)

    def _next_page(self) -> tuple[int, int, list[int], bytes] | None:
        buffer = self._buffer
        if len(buffer) < _HEADER.size:
            if buffer and not CAPTURE.startswith(bytes(buffer[:4])):
                raise OggError("the data is not an Ogg stream (no 'OggS' page header)")
            return None
        capture, version, flags, granule, serial, _seq, crc, count = _HEADER.unpack_from(buffer)
        if capture != CAPTURE or version != 0:
            raise OggError("the data is not an Ogg stream (no 'OggS' page header)")
        end_of_table = _HEADER.size + count
        if len(buffer) < end_of_table:
            return None
        segments = list(buffer[_HEADER.size : end_of_table])
        end = end_of_table + sum(segments)
        if len(buffer) < end:
            return None
        page = bytes(buffer[:end])
        del buffer[:end]
        if ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) != crc:
            raise OggError(f"Ogg page {self.pages} has a bad checksum (corrupt data)")
        if self.serial is None:
            self.serial = serial
        elif serial != self.serial:
            raise OggError("multiplexed Ogg streams are not supported (a second serial number)")
        if self.ended:
            raise OggError("data after the end-of-stream page")
        self.pages += 1
        self.ended = bool(flags & FLAG_EOS)
        return flags, granule, segments, page[end_of_table:]

    def _packets(
        self, flags: int, granule: int, segments: list[int], body: bytes
    ) -> list[OggPacket]:
        if not flags & FLAG_CONTINUED:
            self._partial.clear()  # a lost continuation: drop the fragment
        ends = [i for i, value in enumerate(segments) if value < 255]
        out: list[OggPacket] = []
        pos = 0
        start = 0
        for i, value in enumerate(segments):
            pos += value
            if value < 255:
                self._partial += body[start:pos]
                last = i == ends[-1]
                out.append(
                    OggPacket(
                        bytes(self._partial),
                        granule,
                        bos=bool(flags & FLAG_BOS),
                        eos=bool(flags & FLAG_EOS) and last,
                    )
                )
                self._partial.clear()
                start = pos
        self._partial += body[start:pos]
        return out
