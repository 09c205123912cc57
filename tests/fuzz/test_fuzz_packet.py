"""Fuzz ``agent.packet.PacketParser.parse``: any bytes give ``None`` (+1 trunc) or a sound tuple."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.oracles import check_packet
from tests.fuzz.strategies import fuzz_settings, ip_packets


@fuzz_settings(scale=2)
@given(ip_packets())
@example(b"")
@example(b"\x45" + b"\0" * 18)  # one byte short of an IPv4 header
@example(b"\x4f" + b"\0" * 19)  # IHL 60 with only 20 bytes
@example(b"\x60" + b"\0" * 5 + b"\x2c" + b"\0" * 33)  # IPv6, fragment header missing
def test_packet_parser_never_raises(data: bytes) -> None:
    check_packet(data)


@fuzz_settings()
@given(st.binary(max_size=96), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF),
       st.integers(0, 1))
def test_packet_parser_any_bytes_any_interface(data: bytes, in_if: int, out_if: int,
                                               direction: int) -> None:
    check_packet(data, in_if, out_if, direction)
