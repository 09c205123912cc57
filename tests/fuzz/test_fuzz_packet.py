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


@fuzz_settings()
@given(ip_packets(), st.booleans())
def test_tracking_decapsulating_parser_accounts_each_packet_once(data: bytes,
                                                                  keep_outer: bool) -> None:
    """With tracking and every tunnel on, a packet is dropped only as ``trunc``; otherwise it
    is accounted once (twice with ``keep_outer`` when it was a tunnel), possibly on flush."""
    from netflow_agent.fragments import FragmentPolicy
    from netflow_agent.model import split_key
    from netflow_agent.tunnels import TUNNELS, DecapParser

    parser = DecapParser(TUNNELS, keep_outer, FragmentPolicy(held=4))
    pkt = parser.parse(data, 1, 2, 3, 0)
    parser.flush()
    out = ([pkt] if pkt is not None else []) + parser.extra
    if parser.trunc:
        assert not out and parser.trunc == 1
        return
    assert len(out) == 1 + (keep_outer and parser.decapsulated), (out, parser.stats())
    for key, *_rest in out:
        split_key(key)
    assert parser.stats()["frag_waiting"] == 0
