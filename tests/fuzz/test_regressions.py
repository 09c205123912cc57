"""Crashes and counter errors the fuzzers found, kept as fixed examples (one test each).

* pcap reader: a pcapng file cut inside the section header's byte-order magic, short IDB,
  EPB and SPB bodies and a bad SHB length raised ``struct.error`` (or read the whole rest of
  the file); a record claiming gigabytes was allocated before reading.
* ctnetlink: a fixed-size attribute with a short payload raised ``struct.error`` at the end of
  a datagram and, inside the reader's larger receive buffer, silently decoded the next
  attribute's (or stale) bytes instead.
* ctnetlink: an address attribute of the wrong size (or v4 and v6 mixed in one tuple) made a
  NAT event with 3- or 7-byte addresses, which every exporter then had to reject.
* packet parser: an IPv6 packet with two fragment headers counted two fragments.
* config: a string option holding a NUL character (`path = "a\\u0000b"`) passed conversion
  and crashed `--dry-run` in `os.access` (exit 1 instead of 78).
"""

from __future__ import annotations

import io
import struct

import pytest

from netflow_agent.packet import PacketParser
from netflow_agent.plugins.ingest_conntrack import ctnetlink
from netflow_agent.plugins.ingest_pcap.reader import MAX_RECORD, PcapReader
from tests.fuzz.oracles import check_conntrack, check_packet, check_pcap, read_pcap

SHB = (b"\n\r\r\n\x1c\x00\x00\x00M<+\x1a\x01\x00\x00\x00" + b"\xff" * 8 + b"\x1c\x00\x00\x00")
IDB = b"\x01\x00\x00\x00\x14\x00\x00\x00\x01\x00\x00\x00\xff\xff\x00\x00\x14\x00\x00\x00"


def _block(btype: int, body: bytes) -> bytes:
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def test_pcapng_cut_in_byte_order_magic_is_truncated() -> None:
    packets, truncated, error = read_pcap(SHB[:8])
    assert (packets, truncated, error) == ([], True, "")


@pytest.mark.parametrize("blob", [
    SHB + _block(1, b"\x01\x00"),  # IDB body shorter than linktype + snaplen
    SHB + IDB + _block(6, b"\0" * 8),  # EPB shorter than its fixed part
    SHB + IDB + _block(3, b""),  # SPB without its original length
    b"\n\r\r\n\x08\x00\x00\x00M<+\x1a" + b"\0" * 8,  # SHB length below its minimum
])
def test_short_pcapng_blocks_are_pcap_errors(blob: bytes) -> None:
    reader = PcapReader(io.BytesIO(blob))
    assert list(reader) == [] and reader.error
    check_pcap(blob)


def test_idb_option_running_past_the_block_is_ignored() -> None:
    idb = _block(1, struct.pack("<HHI", 1, 0, 65535) + struct.pack("<HH", 9, 40))
    epb = _block(6, struct.pack("<IIIII", 0, 0, 5, 4, 4) + b"\x45\0\0\0")
    assert read_pcap(SHB + idb + epb) == ([(5000, 1, b"\x45\0\0\0")], False, "")


def test_huge_pcap_record_is_refused_not_allocated() -> None:
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    rec = struct.pack("<IIII", 0, 0, MAX_RECORD + 1, 0)
    reader = PcapReader(io.BytesIO(head + rec))
    assert list(reader) == [] and "limit" in reader.error


def _nest(atype: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack("=HH", 4 + len(body), atype | 0x8000) + body


def _attr(atype: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), atype) + payload + b"\0" * (-len(payload) % 4)


def _ct_new(*attrs: bytes) -> bytes:
    body = struct.pack("=BBH", 2, 0, 0) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), ctnetlink.MSG_CT_NEW, 0x400, 0, 0) + body


ORIG = _nest(1, _nest(1, _attr(1, b"\x0a\0\0\x01"), _attr(2, b"\x0a\0\0\x02")),
             _nest(2, _attr(1, b"\x11"), _attr(2, b"\x30\x39"), _attr(3, b"\0\x35")))


def test_fuzzer_found_counters_attribute_at_datagram_end() -> None:
    data = bytes.fromhex(
        "4000000000010000000000000000000002000000040001000400010004000100200009000c0001"
        "00000000000000000000000c00010000000000000000000004000100")
    check_conntrack(data)  # used to raise struct.error


@pytest.mark.parametrize("short", [
    _nest(3, b""),  # CTA_STATUS without its u32 (not nested in reality; any flag is masked)
    _attr(3, b"\0\0"),  # CTA_STATUS of 2 bytes
    _attr(12, b""),  # CTA_ID empty
    _nest(9, _attr(1, b"\0\0")),  # packets counter of 2 bytes
])
def test_short_fixed_attributes_are_malformed(short: bytes) -> None:
    data = _ct_new(ORIG, short)
    msg = next(ctnetlink.iter_messages(data, len(data)))
    with pytest.raises(ctnetlink.MalformedMessage):
        ctnetlink.parse_conntrack(data, msg.start, msg.end, msg.msg_type, msg.flags)
    check_conntrack(data)


def test_protocol_number_never_read_from_the_next_attribute() -> None:
    orig = _nest(1, _nest(1, _attr(1, b"\x0a\0\0\x01"), _attr(2, b"\x0a\0\0\x02")),
                 _nest(2, _attr(1, b""), _attr(2, b"\x30\x39")))
    data = _ct_new(orig)
    msg = next(ctnetlink.iter_messages(data, len(data)))
    with pytest.raises(ctnetlink.MalformedMessage):
        ctnetlink.parse_conntrack(data, msg.start, msg.end, msg.msg_type, msg.flags)


def test_two_ipv6_fragment_headers_count_one_fragment() -> None:
    frag = struct.pack("!BBHI", 44, 0, 0, 1)
    last = struct.pack("!BBHI", 59, 0, 0, 1)
    data = struct.pack("!IHBB16s16s", 6 << 28, 16, 44, 64, b"\1" * 16, b"\2" * 16) + frag + last
    parser = PacketParser()
    assert parser.parse(data, 1) is not None
    assert parser.frag == 1
    check_packet(data)


@pytest.mark.parametrize("addrs", [
    (_attr(1, b"\x0a\0\0"), _attr(2, b"\x0a\0\0\x02")),  # 3-byte IPv4 source
    (_attr(1, b"\x0a\0\0\x01"), _attr(4, b"\0" * 16)),  # IPv4 source, IPv6 destination
])
def test_address_sizes_must_match_their_family(addrs: tuple[bytes, bytes]) -> None:
    orig = _nest(1, _nest(1, *addrs), _nest(2, _attr(1, b"\x11")))
    data = _ct_new(orig)
    msg = next(ctnetlink.iter_messages(data, len(data)))
    with pytest.raises(ctnetlink.MalformedMessage):
        ctnetlink.parse_conntrack(data, msg.start, msg.end, msg.msg_type, msg.flags)


def test_nul_in_a_string_option_is_a_config_issue(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``path = "a\\u0000b"`` used to crash ``--dry-run`` (exit 1, ValueError from os.access)."""
    from netflow_agent.cli import main

    cfg = tmp_path / "agent.toml"
    cfg.write_text('[[ingest.pcap]]\npath = "a\\u0000b"\n[[export.log]]\npath = "-"\n')
    assert main(["--dry-run", "-c", str(cfg)]) == 78
