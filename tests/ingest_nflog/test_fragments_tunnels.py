"""Fragment tracking and tunnel decapsulation in both NFLOG decoders: C == Python == truth.

The C aggregator (``_nflog.c``) re-implements ``agent/fragments.py`` and ``agent/tunnels.py``;
here both decoders get the same NFLOG datagrams (built from ``tests.support.pcapgen``
packets: fragments in and out of order, every tunnel kind, keep_outer) and must give the same
flows (keys byte for byte, packets, bytes, times, flags, order) and the same counters; the
flows must also be the ground truth. Hypothesis then throws random fragment sequences at both
with tiny tables, so eviction, holding and timeouts are compared too.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netflow_agent.fragments import FragmentPolicy
from netflow_agent.model import split_key
from netflow_agent.plugins.ingest_nflog.decoders import C_ONLY_STATS, CBatcher, PythonBatcher
from tests.fuzz.strategies import fuzz_settings
from tests.ingest_nflog.test_c_decoder import TCP_ACK, _ext, _ip4, _ip6, _message, _summed, _tcp
from tests.support.pcapgen import FlowSpec, PcapBuilder
from tests.support.truth import FlowId

TRACK = FragmentPolicy("track", timeout=30)


def datagrams_of(packets: list[tuple[int, bytes]], per_datagram: int = 3) -> list[bytes]:
    """NFLOG datagrams of a few FORWARD messages each, timestamps from the packets."""
    msgs = [_message(ip, ts=(ts // 10**9, ts % 10**9 // 1000)) for ts, ip in packets]
    return [b"".join(msgs[i:i + per_datagram]) for i in range(0, len(msgs), per_datagram)]


def run(batcher: Any, datagrams: list[bytes], release_at: dict[int, int | None]) -> Any:
    """Feed every datagram (releasing where asked), release all, take one batch."""
    for i, d in enumerate(datagrams):
        batcher.feed(bytearray(d), len(d), 1_700_000_000 * 10**9)
        if i in release_at:
            batcher.release(release_at[i])
    batcher.release(None)
    return batcher.take("test")


def both(datagrams: list[bytes], fragments: FragmentPolicy | None = TRACK,
         decapsulate: tuple[str, ...] = (), keep_outer: bool = False,
         release_at: dict[int, int | None] | None = None) -> tuple[list[tuple], dict[str, int]]:
    """Rows and counters, asserting that the C and Python decoders agree on them."""
    _ext()
    opts = (fragments, decapsulate, keep_outer)
    py = PythonBatcher(*opts)
    c = CBatcher(*opts)
    bp, bc = run(py, datagrams, release_at or {}), run(c, datagrams, release_at or {})
    py_rows = _summed(bp.packets) if bp else []
    columns = ("packets", "octets", "start_ns", "end_ns", "tcp_flags", "out_if")
    c_rows = list(zip(bc.keys(), *(bc.flows[n].tolist() for n in columns),
                      strict=True)) if bc else []
    assert c_rows == py_rows, "C and Python decoders disagree"
    if bp or bc:
        assert (bp.trunc, bp.frag) == (bc.trunc, bc.frag)
    py_stats = py.stats()
    py_stats.pop("shapes")  # the Python decoder's attribute-chain cache
    c_stats = {k: v for k, v in c.stats().items() if k not in C_ONLY_STATS}
    assert c_stats == py_stats
    return py_rows, py_stats


def table_of(rows: list[tuple]) -> dict[FlowId, tuple[int, int]]:
    out = {}
    for key, packets, octets, *_rest in rows:
        k = split_key(key)
        src, dst = ipaddress.ip_address(k.src_addr), ipaddress.ip_address(k.dst_addr)
        out[FlowId.make(k.protocol, str(src), str(dst), k.src_port, k.dst_port)] = (packets,
                                                                                   octets)
    return out


def fragmented(reorder: bool, fragments: str = "track") -> PcapBuilder:
    b = PcapBuilder(fragments=fragments)
    for src, dst in (("10.1.0.1", "10.1.0.2"), ("fd00::1", "fd00::2")):
        b.add(FlowSpec("udp", src, dst, 1000, 53, packets=3, payload=3000, fragment=1200,
                       reorder=reorder, fragment_gap_ns=1000))
        b.add(FlowSpec("udp", src, dst, 1001, 53, packets=2, payload=40))
        b.add(FlowSpec("tcp", src, dst, 40000, 80, packets=2, payload=2000, fragment=1000,
                       reorder=reorder))
    return b


@pytest.mark.parametrize("reorder", [False, True], ids=["in-order", "out-of-order"])
def test_fragments_tracked_identically(reorder: bool) -> None:
    b = fragmented(reorder)
    rows, stats = both(datagrams_of(b.packets))
    assert table_of(rows) == b.truth.table()
    assert stats["frag_unmatched"] == 0 and stats["frag_tracked"] == 3 * 2 * 2 + 2 * 2 * 2
    assert stats["frag_held"] == (stats["frag_tracked"] if reorder else 0)


def test_ports0_is_todays_behaviour_in_both() -> None:
    b = fragmented(True, fragments="ports0")
    rows, stats = both(datagrams_of(b.packets), fragments=None)
    assert table_of(rows) == b.truth.table() and "frag_tracked" not in stats


def test_a_lost_first_fragment_times_out_identically() -> None:
    b = PcapBuilder(fragments="track")
    b.add(FlowSpec("udp", "10.2.0.1", "10.2.0.2", 7, 8, packets=2, payload=3000,
                   fragment=1400, reorder=True))
    packets = [p for p in b.packets if p is not b.packets[2]]  # lose packet 1's first fragment
    last_ts = max(ts for ts, _ip in packets)
    release = {0: last_ts, 1: last_ts + 31 * 10**9}  # too early, then past the timeout
    rows, stats = both(datagrams_of(packets, per_datagram=3), release_at=release)
    assert (stats["frag_held"], stats["frag_unmatched"], stats["frag_tracked"]) == (4, 2, 2)
    assert sum(r[1] for r in rows) == len(packets)


TUNNELS = ["gre", "gre-key", "gre-teb", "erspan2", "erspan3", "vxlan", "geneve", "ipip"]


@pytest.mark.parametrize("keep_outer", [False, True], ids=["inner", "keep-outer"])
@pytest.mark.parametrize("tunnel", TUNNELS)
def test_tunnels_decapsulated_identically(tunnel: str, keep_outer: bool) -> None:
    b = fragmented(True)
    b.tunnel, b.tunnel_id = tunnel, 77
    b.packets.clear()
    b.truth.flows.clear()
    b.add(FlowSpec("udp", "10.3.0.1", "10.3.0.2", 5, 6, packets=3, payload=100))
    b.add(FlowSpec("tcp", "fd03::1", "fd03::2", 7, 8, packets=2, payload=300))
    kinds = ("gre", "vxlan", "geneve", "ipip")
    rows, stats = both(datagrams_of(b.packets), decapsulate=kinds, keep_outer=keep_outer)
    want = b.truth.table()
    if keep_outer:
        want.update(b.outer_truth.table())
    assert table_of(rows) == want
    assert (stats["decapsulated"], stats["decap_failed"]) == (5, 0)


@st.composite
def fragment_sequences(draw: Any) -> list[tuple[int, bytes]]:
    """Fragments of a few datagrams with colliding identities, in any order, some lost,
    some duplicated, over a few seconds."""
    out = []
    for n in range(draw(st.integers(1, 6))):
        v6 = draw(st.booleans())
        src, dst = ("fd00::1", "fd00::2") if v6 else ("10.0.0.1", "10.0.0.2")
        b = PcapBuilder()
        b._ident = draw(st.integers(0, 2))  # identities repeat across datagrams
        b.add(FlowSpec("udp", src, dst, 100 + n, 53, packets=1, payload=draw(st.integers(
            20, 200)), fragment=draw(st.sampled_from([16, 24, 64]))))
        pkts = b.packets
        pkts = draw(st.permutations(pkts))
        keep = draw(st.lists(st.booleans(), min_size=len(pkts), max_size=len(pkts)))
        ts = draw(st.integers(0, 5)) * 10**9
        out += [(1_700_000_000 * 10**9 + ts + i, ip) for i, (ip, k) in
                enumerate(zip([p[1] for p in pkts], keep, strict=True)) if k]
    return draw(st.permutations(out))


@fuzz_settings()
@given(fragment_sequences(), st.integers(1, 3), st.integers(0, 3), st.integers(1, 4),
       st.lists(st.integers(0, 8), max_size=3))
def test_random_fragment_sequences_identical(packets, table, held, timeout, release_points):
    policy = FragmentPolicy("track", timeout=timeout, table=table, held=held)
    grams = datagrams_of(packets, per_datagram=2)
    release = {i: 1_700_000_000 * 10**9 + i * 10**9 for i in release_points}
    rows, _stats = both(grams, fragments=policy, release_at=release)
    assert sum(r[1] for r in rows) == len(packets), "every fragment accounted exactly once"


@st.composite
def tunnel_garbage(draw: Any) -> bytes:
    """An outer IPv4/IPv6 header naming a tunnel, then anything (often a plausible inner)."""
    kind = draw(st.sampled_from(["gre", "vxlan", "geneve", "ipip4", "ipip6"]))
    proto = {"gre": 47, "ipip4": 4, "ipip6": 41}.get(kind, 17)
    head = b""
    if kind in ("vxlan", "geneve"):
        head = struct.pack("!HHHH", 1, 4789 if kind == "vxlan" else 6081, 0, 0)
    inner = draw(st.sampled_from([b"", b"\x45" + bytes(19), b"\x60" + bytes(39),
                                  b"\x02" * 12 + b"\x08\x00" + b"\x45" + bytes(19),
                                  b"\x08\x00\x00\x00\x00\x00\x2a\x00"]))
    body = head + draw(st.binary(max_size=24)) + inner + draw(st.binary(max_size=40))
    src, dst = b"\x0a\0\0\x01", b"\x0a\0\0\x02"
    if draw(st.booleans()):
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1,
                           draw(st.sampled_from([0, 0x2000, 0x0004])), 64, proto, 0, src,
                           dst) + body
    return struct.pack("!IHBB16s16s", 6 << 28, len(body), proto, 64, bytes(16),
                       bytes(15) + b"\x01") + body


@fuzz_settings()
@given(st.lists(tunnel_garbage(), min_size=1, max_size=6), st.booleans())
def test_random_tunnel_packets_identical(packets: list[bytes], keep_outer: bool) -> None:
    grams = datagrams_of([(1_700_000_000 * 10**9 + i, p) for i, p in enumerate(packets)])
    both(grams, decapsulate=("gre", "vxlan", "geneve", "ipip"), keep_outer=keep_outer)


@pytest.mark.parametrize("inner", [
    _ip4(6, _tcp(1000, 80, TCP_ACK) + b"t" * 80, total=0),  # IPv4 total length 0
    _ip6(6, _tcp(1000, 80, TCP_ACK) + b"t" * 60, payload_len=0),  # IPv6 payload length 0
], ids=["ipv4-in-ipip", "ipv6-in-ipv4"])
def test_an_inner_length_of_0_is_the_outers_bytes_from_it_on(inner: bytes) -> None:
    """An inner header saying length 0 (BIG TCP inside a tunnel): the outer's accounted
    length less the inner's offset, in both decoders (and as the pcap and eBPF parsers); the
    inner packet was counted in trunc here and accounted otherwise elsewhere."""
    outer = _ip4(4 if inner[0] >> 4 == 4 else 41, inner)
    rows, stats = both(datagrams_of([(1_700_000_000 * 10**9, outer)]), decapsulate=("ipip",))
    [(_key, packets, octets, *_rest)] = rows
    assert (packets, octets) == (1, len(outer) - 20) == (1, 120)
    assert (stats["decapsulated"], stats["decap_failed"]) == (1, 0)
