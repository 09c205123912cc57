"""NflogDecoder on real receive buffers recorded on this machine (``record_buffers.py``).

The reference is independent of the decoder under test: pyroute2's Marshal with the
``nfulnl_msg`` class for the netlink layer and ``tests.support.truth.parse_ip`` for IP.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.marshal import Marshal

from netflow_agent.model import DIRECTION_EGRESS, DIRECTION_INGRESS, split_key
from netflow_agent.plugins.ingest_nflog.netlink import MSG_PACKET, NflogDecoder
from netflow_agent.plugins.ingest_nflog.reference import nfulnl_msg
from tests.support.truth import FlowId, parse_ip

DATA = Path(__file__).parent / "data"
NS = 1_000_000_000


def _datagrams() -> list[bytes]:
    raw = (DATA / "router.nflog").read_bytes()
    out, off = [], 0
    while off < len(raw):
        (n,) = struct.unpack_from("<I", raw, off)
        out.append(raw[off + 4:off + 4 + n])
        off += 4 + n
    return out


DATAGRAMS = _datagrams()
META = json.loads((DATA / "router.json").read_text())


def _decode(datagrams: list[bytes],
            decoder: NflogDecoder | None = None) -> tuple[list, NflogDecoder]:
    decoder = decoder or NflogDecoder()
    out: list = []
    for d in datagrams:
        decoder.decode(bytearray(d), len(d), 123 * NS, out)
    return out, decoder


def _ours(packets: list) -> Counter:
    table: Counter = Counter()
    for key, length, _flags, _ts, out_if in packets:
        k = split_key(key)
        fid = FlowId.make(k.protocol, _addr(k.src_addr), _addr(k.dst_addr), k.src_port, k.dst_port)
        table[(fid, k.in_if, k.direction, out_if, "pkts")] += 1
        table[(fid, k.in_if, k.direction, out_if, "bytes")] += length
    return table


def _addr(raw: bytes) -> str:
    import ipaddress

    return str(ipaddress.ip_address(raw))


def _reference(datagrams: list[bytes]) -> Counter:
    """pyroute2 + the tests' own IP parser: the same table, decoded independently."""
    marshal = Marshal()
    marshal.msg_map = {MSG_PACKET: nfulnl_msg}
    table: Counter = Counter()
    for d in datagrams:
        for msg in marshal.parse(d):
            if msg["header"]["type"] != MSG_PACKET:
                continue
            hook = msg.get_attr("NFULA_PACKET_HDR")["hook"]
            indev = msg.get_attr("NFULA_IFINDEX_INDEV") or 0
            outdev = msg.get_attr("NFULA_IFINDEX_OUTDEV") or 0
            parsed = parse_ip(msg.get_attr("NFULA_PAYLOAD"))
            assert parsed is not None
            fid, total, _flags, _frag = parsed
            egress = hook >= 3 and not indev
            key_if, direction = (outdev, DIRECTION_EGRESS) if egress else (indev, DIRECTION_INGRESS)
            table[(fid, key_if, direction, outdev, "pkts")] += 1
            table[(fid, key_if, direction, outdev, "bytes")] += total
    return table


def test_recorded_buffers_match_pyroute2_reference() -> None:
    packets, decoder = _decode(DATAGRAMS)
    assert _ours(packets) == _reference(DATAGRAMS)
    assert decoder.seq_gaps == 0 and decoder.malformed == 0
    assert decoder.parser.frag >= 2 * 3 + 2 * 2  # the fragmented UDP datagrams


def test_sent_traffic_is_in_the_buffers_exactly() -> None:
    """Every deterministic flow the recorder sent, with its exact packets and bytes."""
    packets, _ = _decode(DATAGRAMS)
    table: Counter = Counter()
    for key, length, *_ in packets:
        k = split_key(key)
        fid = FlowId.make(k.protocol, _addr(k.src_addr), _addr(k.dst_addr), k.src_port, k.dst_port)
        table[fid] += 1
        table[(fid, "bytes")] += length
    for fid_list, pkts, nbytes in META["sent"]:
        fid = FlowId(*fid_list)
        assert (table[fid], table[(fid, "bytes")]) == (pkts, nbytes), fid


def test_hooks_give_interfaces_and_directions() -> None:
    """FORWARD/INPUT: ingress on the input interface; OUTPUT: egress on the output one."""
    packets, _ = _decode(DATAGRAMS)
    rc, rs = META["ifindex"]["rc"], META["ifindex"]["rs"]
    router, client, server = META["router"][0], META["client"][0], META["server"][0]
    seen = set()
    for key, _length, _flags, ts, out_if in packets:
        k = split_key(key)
        src, dst = _addr(k.src_addr), _addr(k.dst_addr)
        if (src, dst) == (client, server):
            assert (k.in_if, k.direction, out_if) == (rc, DIRECTION_INGRESS, rs)
            assert ts > 1_600_000_000 * NS  # NFULA_TIMESTAMP, not the receive time
            seen.add("forward")
        elif dst == router:
            assert (k.in_if, k.direction, out_if) == (rc, DIRECTION_INGRESS, 0)
            seen.add("input")
        elif src == router:
            assert (k.in_if, k.direction, out_if) == (rc, DIRECTION_EGRESS, rc)
            assert ts == 123 * NS  # no timestamp on OUTPUT: the receive time
            seen.add("output")
    assert seen == {"forward", "input", "output"}


def test_shape_cache_gives_the_same_packets_as_the_full_walk() -> None:
    walker = NflogDecoder()
    walker.MAX_SHAPES = 0  # type: ignore[misc]
    cached, dec = _decode(DATAGRAMS)
    walked, _ = _decode(DATAGRAMS, walker)
    assert cached == walked
    assert 1 <= len(dec.shapes) <= 4


def test_lost_datagram_is_counted_as_seq_gap() -> None:
    lost = next(i for i, d in enumerate(DATAGRAMS[1:], 1) if _messages(d) > 1)
    packets, decoder = _decode(DATAGRAMS[:lost] + DATAGRAMS[lost + 1:])
    all_packets, _ = _decode(DATAGRAMS)
    assert decoder.seq_gaps == _messages(DATAGRAMS[lost])
    assert len(packets) + decoder.seq_gaps == len(all_packets)


def _messages(datagram: bytes) -> int:
    out: list = []
    NflogDecoder().decode(bytearray(datagram), len(datagram), 0, out)
    return len(out)


def test_cut_datagram_is_counted_not_raised() -> None:
    d = max(DATAGRAMS, key=len)
    out: list = []
    decoder = NflogDecoder()
    decoder.decode(bytearray(d), len(d) // 2, 0, out)
    assert decoder.malformed == 1
    assert 0 < len(out) < _messages(d)


def test_truncated_payload_counts_trunc() -> None:
    """A payload shorter than an IP header (tiny snaplen) is ``trunc``, not a flow."""
    d = bytearray(DATAGRAMS[0])
    out: list = []
    decoder = NflogDecoder()
    decoder.decode(d, len(d), 0, out)
    n = len(out)
    # rewrite the first message's payload attribute to 12 bytes (+ keep lengths consistent)
    first = _first_payload(d)
    assert first is not None
    a, alen = first
    d[a:a + 2] = struct.pack("=H", 4 + 12)
    out2: list = []
    dec2 = NflogDecoder()
    dec2.decode(d, len(d), 0, out2)
    assert len(out2) == n - 1 and dec2.parser.trunc == 1
    del alen


def _first_payload(d: bytearray) -> tuple[int, int] | None:
    mlen = struct.unpack_from("=I", d, 0)[0]
    a = 20
    while a < mlen:
        alen, atype = struct.unpack_from("=HH", d, a)
        if atype & 0x3FFF == 9:
            return a, alen
        a += (alen + 3) & ~3
    return None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 11))
def test_garbage_never_raises(noise: bytes, which: int) -> None:
    """Random bytes, alone or spliced into a real datagram, are counted, never raised."""
    real = DATAGRAMS[which % len(DATAGRAMS)]
    for data in (noise, real[:len(noise)] + noise[len(real):], noise[:8] + real[8:]):
        NflogDecoder().decode(bytearray(data), len(data), 0, [])


@pytest.mark.parametrize("n", [0, 1, 15, 16, 19])
def test_short_buffers(n: int) -> None:
    NflogDecoder().decode(bytearray(DATAGRAMS[0][:n]), n, 0, [])
