"""Golden bytes and wire rules of the pure v5 / v9 encoders, cross-checked with ``netflow``."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netflow_agent.model import END_IDLE, FlowRecord
from netflow_agent.plugins.export_netflow import v5, v9
from netflow_agent.plugins.export_netflow.state import ExportState
from netflow_agent.plugins.export_netflow.v5 import Tally
from tests.export_netflow.collect import decode

BOOT = 1_700_000_000_000_000_000  # agent start, wall-clock ns
NOW = BOOT + 60_123_456_789  # export time: 60.123456789 s after start


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def tcp4(**kw) -> FlowRecord:
    values = dict(ip_version=4, protocol=6, src_addr=ip("10.1.2.3"), dst_addr=ip("192.0.2.9"),
                  src_port=40000, dst_port=443, tos=0x10, in_if=3, out_if=7, packets=12,
                  octets=3400, start_ns=BOOT + 1_500_000_000, end_ns=BOOT + 59_000_000_000,
                  tcp_flags=0x1B, end_reason=END_IDLE)
    values.update(kw)
    return FlowRecord(**values)


def udp6(**kw) -> FlowRecord:
    values = dict(ip_version=6, protocol=17, src_addr=ip("fd00::1"), dst_addr=ip("fd00::53"),
                  src_port=5353, dst_port=53, packets=2, octets=180,
                  start_ns=BOOT + 2_000_000_000, end_ns=BOOT + 3_000_000_000)
    values.update(kw)
    return FlowRecord(**values)


# --- NetFlow v5 -----------------------------------------------------------------------------


def test_v5_golden_bytes():
    state = ExportState(boot_ns=BOOT, source_id=7, engine_type=1, flows=41)
    [pdu] = v5.encode_flows([tcp4()], state, NOW)
    expected = bytes.fromhex(
        "0005" "0001"  # version 5, count 1
        "0000eadb"  # sys_uptime 60123 ms
        "6553f13c"  # unix_secs 1700000060
        "075bcd15"  # unix_nsecs 123456789 (nanoseconds)
        "00000029"  # flow_sequence 41 (flows before this PDU)
        "01" "07" "0000"  # engine_type 1, engine_id 7, sampling 0
        "0a010203" "c0000209" "00000000"  # src, dst, next hop
        "0003" "0007"  # input, output ifindex
        "0000000c" "00000d48"  # dPkts 12, dOctets 3400
        "000005dc" "0000e678"  # First 1500 ms, Last 59000 ms
        "9c40" "01bb"  # ports 40000 -> 443
        "00" "1b" "06" "10"  # pad1, tcp_flags, proto, tos
        "0000" "0000" "00" "00" "0000"  # src_as, dst_as, masks, pad2
    )
    assert pdu == expected
    assert state.flows == 42 and state.packets == 1


def test_v5_decoded_by_netflow_package():
    state = ExportState(boot_ns=BOOT)
    pdus = v5.encode_flows([tcp4(src_port=p) for p in range(70)], state, NOW)
    packets = decode(pdus)
    assert [p.header.count for p in packets] == [30, 30, 10]
    assert [p.header.sequence for p in packets] == [0, 30, 60]
    flow = packets[1].flows[0]
    assert (flow.SRC_PORT, flow.IN_PACKETS, flow.IN_OCTETS) == (30, 12, 3400)
    assert packets[0].header.uptime - flow.FIRST_SWITCHED == 60123 - 1500
    assert all(len(p) <= 24 + 30 * 48 for p in pdus)


def test_v5_skips_ipv6_and_counts():
    tally = Tally()
    pdus = v5.encode_flows([udp6(), tcp4(), udp6()], ExportState(boot_ns=BOOT), NOW, tally)
    assert tally.skipped == 2 and tally.records == [1]
    assert struct.unpack_from("!H", pdus[0], 2)[0] == 1


def test_v5_splits_counters_over_32_bits():
    big = tcp4(packets=5_000_000_000, octets=3 * 2**32 + 5)
    tally = Tally()
    state = ExportState(boot_ns=BOOT)
    [pdu] = v5.encode_flows([big], state, NOW, tally)
    flows = decode([pdu])[0].flows
    assert len(flows) == 4 and tally.split == 3 and state.flows == 4
    assert sum(f.IN_PACKETS for f in flows) == big.packets
    assert sum(f.IN_OCTETS for f in flows) == big.octets
    assert all(f.IN_OCTETS < 2**32 and f.SRC_PORT == 40000 for f in flows)


def test_v5_uptime_origin_moves_back_for_older_records():
    """A replayed record older than the agent start keeps exact absolute times."""
    state = ExportState(boot_ns=BOOT)
    old = tcp4(start_ns=BOOT - 5_000_000_000, end_ns=BOOT - 4_000_000_000)
    [pdu] = v5.encode_flows([old], state, NOW)
    packet = decode([pdu])[0]
    h, f = packet.header, packet.flows[0]
    export_ms = h.timestamp * 1000 + h.timestamp_nano // 1_000_000
    assert export_ms - (h.uptime - f.FIRST_SWITCHED) == (BOOT - 5_000_000_000) // 1_000_000



def test_a_record_at_int64s_first_ms_does_not_stop_later_exports():
    """A flow starting within 1 ms of int64's minimum moves the uptime origin there for good
    (its whole ms lies below int64): v5 and v9 keep exporting every later batch, their
    First/Last the ms since that origin modulo 2**32 as Python integers give them (the
    encoders raised OverflowError and every later batch was lost as an encode error)."""
    for encode in (lambda recs, st: v5.encode_flows(recs, st, NOW),
                   lambda recs, st: v9_encode(recs, st)):
        state = ExportState(boot_ns=BOOT)
        pdus = encode([tcp4(start_ns=-2**63 + 1000)], state)
        boot_ms = (-2**63 + 1000) // 1_000_000
        assert state.boot_ns // 1_000_000 == boot_ms
        laters = (tcp4(), tcp4(start_ns=NOW - 10**9, end_ns=NOW - 5))
        for later in laters:
            pdus += encode([later], state)
        packets = decode(pdus)
        assert len(packets) == 3
        for later, packet in zip(laters, packets[1:], strict=True):
            flow = packet.flows[0]
            first, last = ((flow.FIRST_SWITCHED, flow.LAST_SWITCHED) if hasattr(
                flow, "FIRST_SWITCHED") else (flow.data["FIRST_SWITCHED"],
                                              flow.data["LAST_SWITCHED"]))
            assert first == (later.start_ns // 1_000_000 - boot_ms) % 2**32
            assert last == (later.end_ns // 1_000_000 - boot_ms) % 2**32



def test_times_before_boot_are_uptime_0_never_after_the_header():
    """A start of 0 (a crafted capture replayed) or an end before the exporter's boot is
    First/Last 0 in v5 and v9, not (t - boot) mod 2**32 ms, which lies days after the
    header's sysUpTime (RFC 3954 5.2: a record's times are not after the export); the
    usual record beside them keeps its exact times."""
    records = [tcp4(start_ns=0), tcp4(start_ns=0, end_ns=BOOT - 5_000_000_000), tcp4()]
    for encode in (lambda st: v5.encode_flows(records, st, NOW),
                   lambda st: v9_encode(records, st)):
        [packet] = decode(encode(ExportState(boot_ns=BOOT)))
        times = [(f.FIRST_SWITCHED, f.LAST_SWITCHED) if hasattr(f, "FIRST_SWITCHED")
                 else (f.data["FIRST_SWITCHED"], f.data["LAST_SWITCHED"])
                 for f in packet.flows]
        assert all(t <= packet.header.uptime for pair in times for t in pair)
        assert times == [(0, 59000), (0, 0), (1500, 59000)]


# --- NetFlow v9 -----------------------------------------------------------------------------


def v9_encode(records, state, policy=None, now=NOW, counters64=False, tally=None):
    return v9.encode_flows(records, state, v9.flow_templates(counters64),
                           policy or v9.RefreshPolicy(), now, counters64=counters64, tally=tally)


def test_v9_golden_bytes():
    state = ExportState(boot_ns=BOOT, source_id=0x01020304)
    [pdu] = v9_encode([tcp4()], state)
    header = bytes.fromhex(
        "0009" "0002"  # version 9, count 2 = 1 template record + 1 data record
        "0000ee48"  # sysUpTime 61000 ms: the export second rounded up (61.000)
        "6553f13d"  # unix_secs 1700000061
        "00000000"  # sequence: 0 packets before this one
        "01020304"  # source id
    )
    template = bytes.fromhex(
        "0000" "004c"  # template FlowSet, length 76
        "0100" "0011"  # template 256, 17 fields
        "00080004" "000c0004" "00070002" "000b0002"  # src, dst, sport, dport
        "00040001" "00060001" "00050001" "003c0001"  # proto, flags, tos, ipVersion
        "000a0004" "000e0004" "003d0001"  # input, output, direction
        "00020004" "00010004" "00160004" "00150004"  # pkts, bytes, first, last
        "00200002"  # ICMP_TYPE
        "00880001"  # flowEndReason
    )
    data = bytes.fromhex(
        "0100" "0030"  # data FlowSet 256, length 48 (4 + 44, no padding)
        "0a010203" "c0000209" "9c40" "01bb" "06" "1b" "10" "04"
        "00000003" "00000007" "00"
        "0000000c" "00000d48" "000005dc" "0000e678"
        "0000"  # ICMP type/code (not ICMP)
        "01"  # flowEndReason: idle timeout
    )
    assert pdu == header + template + data


def test_v9_decoded_by_netflow_package_ipv4_and_ipv6():
    state = ExportState(boot_ns=BOOT)
    icmp = tcp4(protocol=1, src_port=0, dst_port=8 << 8, tcp_flags=0)
    routed = udp6(next_hop=ip("fd00::fe"), src_mask=64, dst_mask=48)
    pdus = v9_encode([tcp4(), udp6(), icmp, routed], state)
    [packet] = decode(pdus)
    by_ver = {}
    for f in packet.flows:
        by_ver.setdefault(f.data["IP_PROTOCOL_VERSION"], []).append(f.data)
    assert len(by_ver[4]) == 2 and len(by_ver[6]) == 2
    icmp_rec = next(d for d in by_ver[4] if d["PROTOCOL"] == 1)
    assert icmp_rec["L4_DST_PORT"] == icmp_rec["ICMP_TYPE"] == 0x0800
    routed_rec = next(d for d in by_ver[6] if "IPV6_NEXT_HOP" in d)
    assert routed_rec["IPV6_NEXT_HOP"] == "fd00::fe" and routed_rec["IPV6_SRC_MASK"] == 64
    assert packet.header.count == 3 + 4  # templates 256, 257, 259 + four data records
    template_ids = set(packet.templates)
    assert {256, 257, 259} <= template_ids


def test_v9_count_sequence_padding_and_mtu():
    state = ExportState(boot_ns=BOOT)
    policy = v9.RefreshPolicy(mtu=600, refresh_packets=1000)
    records = [tcp4(src_port=i) for i in range(100)] + [udp6(src_port=i) for i in range(40)]
    tally = Tally()
    pdus = v9_encode(records, state, policy, tally=tally)
    assert sum(tally.records) == 140
    for seq, pdu in enumerate(pdus):
        assert len(pdu) <= 600
        version, count, _, _, sequence, _ = v9.HEADER.unpack_from(pdu)
        assert (version, sequence) == (9, seq)
        assert count == _count_records(pdu)
    assert state.packets == len(pdus)


def _count_records(pdu: bytes) -> int:
    """Walk the FlowSets: template records + data records, checking 4-byte padding."""
    templates = {tid: t.record.size for tid, t in v9.flow_templates(False).items()}
    off, count = 20, 0
    while off < len(pdu):
        fsid, length = struct.unpack_from("!HH", pdu, off)
        assert length % 4 == 0 and length >= 4
        if fsid == 0:
            count += 1  # one template per FlowSet in this encoder
        else:
            count += (length - 4) // templates[fsid]
        off += length
    assert off == len(pdu)
    return count


def test_v9_template_refresh_by_packets():
    state = ExportState(boot_ns=BOOT)
    policy = v9.RefreshPolicy(mtu=1400, refresh_packets=5)
    with_template = []
    for i in range(12):
        [pdu] = v9_encode([tcp4()], state, policy, now=NOW + i)
        with_template.append(struct.unpack_from("!H", pdu, 20)[0] == 0)
    assert [i for i, t in enumerate(with_template) if t] == [0, 5, 10]


def test_v9_template_refresh_by_time():
    state = ExportState(boot_ns=BOOT)
    policy = v9.RefreshPolicy(refresh_packets=1000, refresh_ns=60_000_000_000)
    sent = []
    for t_s in (0, 30, 59, 61, 100, 122):
        [pdu] = v9_encode([tcp4()], state, policy, now=NOW + t_s * 1_000_000_000)
        sent.append(struct.unpack_from("!H", pdu, 20)[0] == 0)
    assert sent == [True, False, False, True, False, True]


def test_v9_force_templates_once():
    state = ExportState(boot_ns=BOOT)
    v9_encode([tcp4()], state)
    state.force_templates = True
    first = v9_encode([tcp4() for _ in range(200)], state)
    assert struct.unpack_from("!H", first[0], 20)[0] == 0
    assert all(struct.unpack_from("!H", p, 20)[0] == 256 for p in first[1:])
    assert not state.force_templates


def test_v9_counters64_carries_large_counters_unsplit():
    state = ExportState(boot_ns=BOOT)
    big = tcp4(packets=2**40, octets=2**50)
    [packet] = decode(v9_encode([big], state, counters64=True))
    [flow] = packet.flows
    assert (flow.data["IN_PKTS"], flow.data["IN_BYTES"]) == (2**40, 2**50)


def test_v9_counters32_splits_large_counters():
    tally = Tally()
    [packet] = decode(v9_encode([tcp4(octets=2**33)], ExportState(boot_ns=BOOT), tally=tally))
    assert len(packet.flows) == 3 and tally.split == 2
    assert sum(f.data["IN_BYTES"] for f in packet.flows) == 2**33


def test_v9_times_exact_for_collectors():
    """unix_secs*1000 - sysUpTime + First must give the flow start to the millisecond."""
    state = ExportState(boot_ns=BOOT)
    rec = tcp4()
    [packet] = decode(v9_encode([rec], state))
    h, f = packet.header, packet.flows[0].data
    assert h.timestamp * 1000 - h.uptime + f["FIRST_SWITCHED"] == rec.start_ns // 1_000_000
    assert h.timestamp * 1000 - h.uptime + f["LAST_SWITCHED"] == rec.end_ns // 1_000_000


def test_v9_records_of_the_export_second_are_not_after_the_header():
    """Issue 18 item 1: a flow ending 0.9 s into the export second; the header covers it."""
    state = ExportState(boot_ns=BOOT)
    rec = tcp4(end_ns=NOW - 1_000_000)  # 60.122 s: after the whole second 60.000
    [packet] = decode(v9_encode([rec], state))
    h, f = packet.header, packet.flows[0].data
    assert f["FIRST_SWITCHED"] <= f["LAST_SWITCHED"] <= h.uptime
    assert h.timestamp * 1000 - h.uptime + f["LAST_SWITCHED"] == rec.end_ns // 1_000_000


def test_v9_record_ahead_of_the_clock_moves_the_header_and_it_never_goes_back():
    """A record time after ``now`` (a clock step) moves the header forward, not the record;
    the next packet's header does not go back, and the boot time stays the same."""
    state = ExportState(boot_ns=BOOT)
    ahead = tcp4(start_ns=NOW, end_ns=NOW + 2_500_000_000)
    first, second = decode(v9_encode([ahead], state) + v9_encode([tcp4()], state))
    assert first.flows[0].data["LAST_SWITCHED"] <= first.header.uptime == 63000
    assert second.header.uptime == 63000 and second.header.timestamp == first.header.timestamp
    for h in (first.header, second.header):
        assert h.timestamp * 1000 - h.uptime == BOOT // 1_000_000


def test_v5_record_ahead_of_the_clock_moves_the_header():
    state = ExportState(boot_ns=BOOT)
    [pdu] = v5.encode_flows([tcp4(end_ns=NOW + 700_000_000)], state, NOW)
    packet = decode([pdu])[0]
    h = packet.header
    assert packet.flows[0].LAST_SWITCHED <= h.uptime == 60823
    assert h.timestamp * 1000 + h.timestamp_nano // 1_000_000 - h.uptime == BOOT // 1_000_000


@settings(max_examples=40, deadline=None)
@given(n4=st.integers(0, 120), n6=st.integers(0, 60), mtu=st.integers(512, 9000),
       refresh=st.integers(1, 30))
def test_v9_any_batch_fits_mtu_and_counts(n4, n6, mtu, refresh):
    state = ExportState(boot_ns=BOOT)
    policy = v9.RefreshPolicy(mtu=mtu, refresh_packets=refresh)
    records = [tcp4(src_port=i) for i in range(n4)] + [udp6(src_port=i) for i in range(n6)]
    tally = Tally()
    pdus = v9_encode(records, state, policy, tally=tally)
    assert sum(tally.records) == n4 + n6
    for pdu in pdus:
        assert len(pdu) <= mtu
        assert v9.HEADER.unpack_from(pdu)[1] == _count_records(pdu)
    if pdus:
        decoded = decode(pdus)
        assert sum(len(p.flows) for p in decoded) == n4 + n6


def test_mtu_too_small_for_template_is_an_error():
    with pytest.raises(ValueError, match="mtu"):
        v9_encode([udp6(next_hop=ip("fd00::1"))], ExportState(boot_ns=BOOT),
                  v9.RefreshPolicy(mtu=120))
