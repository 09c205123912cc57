"""pcap and pcapng file reading: ``(timestamp_ns, linktype, frame, orig_len)`` for every
packet; ``orig_len`` is the frame's length on the wire, longer than ``frame`` when the snap
length cut it (the IP parser takes a packet whose length field says 0 from it).

Formats: classic pcap (both byte orders, microsecond and nanosecond magic, and the "modified"
magic ``0xA1B2CD34`` of Kuznetzov's patched libpcap, whose record headers are 24 bytes) and
pcapng (draft-ietf-opsawg-pcapng: SHB, IDB with ``if_tsresol`` and ``if_tsoffset``, EPB, SPB,
OPB; several sections; other blocks are skipped). A file that ends in the middle of a record
stops the iteration and is reported by :attr:`PcapReader.truncated`; a record or block whose
header is corrupt stops it too, after the packets before it (as tshark shows them), and is
reported by :attr:`PcapReader.error`; a file that is neither format raises
:class:`PcapError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
#: Kuznetzov's patched libpcap: 8 more bytes per record (ifindex, protocol, packet type, pad)
PCAP_MAGIC_MODIFIED = 0xA1B2CD34
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
_IDB, _SPB, _EPB, _OPB = 1, 3, 6, 2
#: compressed captures (Wireshark opens them): their magic, and the name a user knows
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"),
               (b"\x04\x22\x4d\x18", "lz4"), (b"BZh", "bzip2"), (b"\xfd7zX", "xz"))
#: larger records are refused rather than allocated (snap lengths stop at 256 KiB in practice)
MAX_RECORD = 64 << 20


class PcapError(ValueError):
    """The file is not a pcap or pcapng capture, or its headers are inconsistent."""


class PcapReader:
    """Iterate over the packets of one capture file."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.truncated = False
        #: why the iteration stopped before the end of the file (a corrupt header), or "".
        #: Not raised: the caller would lose the packets it has read but not handed on yet
        self.error = ""
        head = f.read(4)
        if len(head) < 4:
            raise PcapError("file too short for a capture header")
        self._head = head

    def __iter__(self) -> Iterator[tuple[int, int, bytes, int]]:
        le = struct.unpack("<I", self._head)[0]
        be = struct.unpack(">I", self._head)[0]
        if PCAPNG_SHB in (le, be):
            return self._pcapng()
        for order in ("<", ">"):
            magic = struct.unpack(order + "I", self._head)[0]
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_MODIFIED):
                return self._pcap(order, 1 if magic == PCAP_MAGIC_NS else 1000,
                                  8 if magic == PCAP_MAGIC_MODIFIED else 0)
        packed = next((name for magic, name in _COMPRESSED if self._head.startswith(magic)), "")
        if packed:  # tshark reads these; say what to do rather than "bad magic"
            raise PcapError(f"a {packed}-compressed file: decompress it first")
        raise PcapError(f"not a pcap/pcapng file (magic 0x{be:08x})")

    # --- classic pcap ------------------------------------------------------------------------

    def _pcap(self, order: str, ts_mult: int, extra: int) -> Iterator[tuple[int, int, bytes, int]]:
        rest = self.f.read(20)
        if len(rest) < 20:
            raise PcapError("truncated pcap file header")
        _vmaj, _vmin, _zone, _sigfigs, _snap, linktype = struct.unpack(order + "HHiIII", rest)
        linktype &= 0xFFFF
        rec = struct.Struct(order + "IIII" + "x" * extra)
        read = self.f.read
        while True:
            hdr = read(rec.size)
            if len(hdr) < rec.size:
                self.truncated = bool(hdr)
                return
            sec, frac, incl, orig = rec.unpack(hdr)
            if incl > MAX_RECORD:
                self.error = f"pcap record of {incl} bytes (limit {MAX_RECORD})"
                return
            data = read(incl)
            if len(data) < incl:
                self.truncated = True
                return
            yield sec * 1_000_000_000 + frac * ts_mult, linktype, data, max(orig, incl)

    # --- pcapng ------------------------------------------------------------------------------

    def _pcapng(self) -> Iterator[tuple[int, int, bytes, int]]:
        try:  # a corrupt block ends the packets (free in Python >= 3.11 until it raises)
            yield from self._pcapng_blocks()
        except PcapError as exc:
            self.error = str(exc)

    def _pcapng_blocks(self) -> Iterator[tuple[int, int, bytes, int]]:
        order = "<"
        interfaces: list[tuple[int, int, int, int]] = []  # see _parse_idb
        block_type = PCAPNG_SHB
        head = self._head
        while True:
            rest = self.f.read(4) if head else self.f.read(8)
            if head:
                raw = head + rest
                head = b""
            else:
                raw = rest
            if len(raw) < 8:
                self.truncated = bool(raw)
                return
            if struct.unpack("<I", raw[:4])[0] == PCAPNG_SHB:
                bom = self.f.read(4)
                if len(bom) < 4:
                    self.truncated = True
                    return
                order = "<" if struct.unpack("<I", bom)[0] == PCAPNG_BOM else ">"
                block_type, length = struct.unpack(order + "II", raw)
                if length < 28 or length % 4 or length > MAX_RECORD:
                    raise PcapError(f"bad pcapng section header length {length}")
                body = bom + self.f.read(length - 16)
                interfaces = []
            else:
                block_type, length = struct.unpack(order + "II", raw)
                if length < 12 or length % 4 or length > MAX_RECORD:
                    raise PcapError(f"bad pcapng block length {length}")
                body = self.f.read(length - 12)
            trailer = self.f.read(4)
            if len(body) < length - 12 or len(trailer) < 4:
                self.truncated = True
                return
            if block_type == _IDB:
                interfaces.append(_parse_idb(order, body))
            elif block_type in (_EPB, _OPB):
                pkt = _parse_epb(order, body, interfaces, block_type == _OPB)
                if pkt:
                    yield pkt
            elif block_type == _SPB and interfaces:  # no timestamp: 0 = "same as before"
                if len(body) < 4:
                    raise PcapError("pcapng simple packet block too short")
                yield _parse_spb(order, body, interfaces[0])


def _parse_idb(order: str, body: bytes) -> tuple[int, int, int, int]:
    """``(linktype, timestamp ticks per second, offset in ns, snap length)`` of an
    interface: if_tsresol (option 9) and if_tsoffset (option 14, seconds added to every
    timestamp); a snap length of 0 is none."""
    if len(body) < 8:
        raise PcapError("pcapng interface description block too short")
    linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", body)
    ticks_per_s = 1_000_000  # default resolution: microseconds
    offset_ns = 0
    off = 8
    while off + 4 <= len(body):
        code, olen = struct.unpack_from(order + "HH", body, off)
        if code == 0:
            break
        if off + 4 + olen > len(body):
            break
        if code == 9 and olen >= 1:  # if_tsresol
            res = body[off + 4]
            ticks_per_s = 2 ** (res & 0x7F) if res & 0x80 else 10 ** res
        elif code == 14 and olen == 8:  # if_tsoffset
            offset_ns = struct.unpack_from(order + "q", body, off + 4)[0] * 1_000_000_000
        off += 4 + ((olen + 3) & ~3)
    return linktype, ticks_per_s, offset_ns, snaplen


def _parse_spb(order: str, body: bytes, interface: tuple[int, int, int, int]
               ) -> tuple[int, int, bytes, int]:
    """A simple packet block of the section's first interface. It says only the original
    length: the captured part is that or the interface's snap length, whichever is shorter,
    and the block's padding after it is no part of the packet. No timestamp: 0, "the time
    of the packet before"."""
    (orig_len,) = struct.unpack_from(order + "I", body)
    snaplen = interface[3]
    captured = min(orig_len, snaplen) if snaplen else orig_len
    frame = body[4:4 + captured]
    return 0, interface[0], frame, max(orig_len, len(frame))


def _parse_epb(order: str, body: bytes, interfaces: list[tuple[int, int, int, int]],
               obsolete: bool) -> tuple[int, int, bytes, int] | None:
    if len(body) < 20:
        raise PcapError("pcapng packet block too short")
    if obsolete:
        iface, _drops, ts_hi, ts_lo, incl, orig = struct.unpack_from(order + "HHIIII", body)
    else:
        iface, ts_hi, ts_lo, incl, orig = struct.unpack_from(order + "IIIII", body)
    if iface >= len(interfaces):
        raise PcapError(f"packet refers to undeclared interface {iface}")
    linktype, ticks_per_s, offset_ns, _snaplen = interfaces[iface]
    ticks = (ts_hi << 32) | ts_lo
    frame = body[20:20 + incl]
    return ticks * 1_000_000_000 // ticks_per_s + offset_ns, linktype, frame, max(orig, len(frame))
