"""NAT events: v9 NEL records (template, values, times) and the seed's v5 pseudo-flows.

Events are built here as :class:`agent.model.NatEvent` (the conntrack ingest produces the same
records); the bytes are checked by hand, by the ``netflow`` package, by tshark and by nfdump.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from netflow_agent.model import NAT_START, NAT_STOP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, NatEvent
from netflow_agent.plugins.export_netflow import nel, v9
from netflow_agent.plugins.export_netflow.state import ExportState
from netflow_agent.plugins.export_netflow.v5 import Tally
from tests.export_netflow.collect import (
    decode,
    nfcapd,
    tshark_fields,
    tshark_problems,
    write_capture,
)
from tests.support.collectors import free_udp_port

BOOT = 1_700_000_000_000_000_000
NOW = BOOT + 90_000_000_000
EVENT_NS = BOOT + 42_250_000_000


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def snat_event(event=NAT_START, **kw) -> NatEvent:
    """10.99.2.1:41000 -> 10.99.3.1:5353 masqueraded to 10.99.3.254:61000."""
    values = dict(event=event, time_ns=EVENT_NS, ip_version=4, protocol=17,
                  src_addr=ip("10.99.2.1"), dst_addr=ip("10.99.3.1"), src_port=41000,
                  dst_port=5353, post_src_addr=ip("10.99.3.254"),
                  post_dst_addr=ip("10.99.3.1"), post_src_port=61000, post_dst_port=5353,
                  snat=True)
    values.update(kw)
    return NatEvent(**values)


def dnat_event(event=NAT_START) -> NatEvent:
    """Port forward: 10.99.2.1:40000 -> 10.99.2.254:8080 goes to 10.99.3.1:80."""
    return NatEvent(event=event, time_ns=EVENT_NS, ip_version=4, protocol=6,
                    src_addr=ip("10.99.2.1"), dst_addr=ip("10.99.2.254"), src_port=40000,
                    dst_port=8080, post_src_addr=ip("10.99.2.1"), post_dst_addr=ip("10.99.3.1"),
                    post_src_port=40000, post_dst_port=80, dnat=True)


def snat6_event(event=NAT_STOP) -> NatEvent:
    return NatEvent(event=event, time_ns=EVENT_NS, ip_version=6, protocol=6,
                    src_addr=ip("fd99:2::1"), dst_addr=ip("fd99:3::1"), src_port=47486,
                    dst_port=8080, post_src_addr=ip("fd99:3::fe"), post_dst_addr=ip("fd99:3::1"),
                    post_src_port=47486, post_dst_port=8080, snat=True)


def encode_v9(events, values="legacy", state=None):
    state = state or ExportState(boot_ns=BOOT, source_id=9)
    return nel.encode_v9(events, state, v9.RefreshPolicy(), NOW, values=values)


def test_nel_v9_golden_bytes():
    [pdu] = encode_v9([snat_event()])
    template = bytes.fromhex(
        "0000" "0034"  # template FlowSet, 52 bytes
        "0104" "000b"  # template 260, 11 fields (ipt_NETFLOW's NAT template order)
        "01430008"  # observationTimeMilliseconds (323), 8
        "00080004" "000c0004"  # pre-NAT source / destination address
        "00e10004" "00e20004"  # postNATSource/DestinationIPv4Address (225/226)
        "00070002" "000b0002"  # pre-NAT ports
        "00e30002" "00e40002"  # postNAPTSource/DestinationTransportPort (227/228)
        "00040001" "00e60001"  # protocolIdentifier, natEvent (230)
    )
    data = bytes.fromhex(
        "0104" "0028"  # data FlowSet 260, 40 bytes = 4 + 34 + 2 padding
        "0000018bcfe60d0a"  # 1700000042250 ms
        "0a630201" "0a630301" "0a6303fe" "0a630301"
        "a028" "14e9" "ee48" "14e9"  # 41000, 5353, 61000, 5353
        "11" "01"  # UDP, natEvent 1 (create, historic)
        "0000"
    )
    assert pdu[20:] == template + data
    assert struct.unpack("!HH", pdu[:4]) == (9, 2)


def test_nel_values_legacy_and_rfc8158():
    events = [snat_event(NAT_START), snat_event(NAT_STOP), snat6_event(NAT_START),
              snat6_event(NAT_STOP)]
    legacy = [f.data["natEvent"] for p in decode(encode_v9(events)) for f in p.flows]
    modern = [f.data["natEvent"] for p in decode(encode_v9(events, "rfc8158")) for f in p.flows]
    assert sorted(legacy) == [1, 1, 2, 2]
    assert sorted(modern) == [4, 4, 5, 5]  # NAT44 and NAT66: session values (RFC 8158 4.3)


def test_nel_ipv6_template_and_fields():
    [packet] = decode(encode_v9([snat6_event()]))
    [flow] = packet.flows
    assert 261 in packet.templates
    assert flow.data["IPV6_SRC_ADDR"] == "fd99:2::1"
    # netflow 0.12.2 leaves 281 as an integer (it is not in its list of address fields)
    assert flow.data["NF_F_XLATE_SRC_ADDR_IPV6"] == int(ipaddress.ip_address("fd99:3::fe"))
    assert flow.data["NF_F_EVENT_TIME_MSEC"] == EVENT_NS // 1_000_000


def test_nel_event_without_time_gets_export_time_not_1970():
    [packet] = decode(encode_v9([snat_event(time_ns=0)]))
    assert packet.flows[0].data["NF_F_EVENT_TIME_MSEC"] == NOW // 1_000_000


def test_nel_mixed_family_event_is_skipped_and_counted():
    bad = snat_event(post_src_addr=ip("fd00::1"))
    tally = Tally()
    pdus = nel.encode_v9([bad, snat_event()], ExportState(boot_ns=BOOT), v9.RefreshPolicy(),
                         NOW, tally=tally)
    assert tally.skipped == 1 and tally.records == [1] and len(pdus) == 1


def test_nel_v9_shares_sequence_with_flows():
    state = ExportState(boot_ns=BOOT)
    encode_v9([snat_event()], state=state)
    [second] = encode_v9([dnat_event()], state=state)
    assert v9.HEADER.unpack_from(second)[4] == 1


def test_nel_v9_tshark_and_nfdump(tmp_path):
    events = [snat_event(), snat_event(NAT_STOP), dnat_event(), snat6_event()]
    pdus = encode_v9(events)
    capture = write_capture(pdus, tmp_path / "nel.pcap")
    assert tshark_problems(capture) == ""
    rows = tshark_fields(capture, ["cflow.nat_event", "cflow.post_natsource_ipv4_address",
                                   "cflow.post_naptsource_transport_port"])
    assert rows == [["1,2,1,2", "10.99.3.254,10.99.3.254,10.99.2.1",
                     "61000,61000,40000,47486"]]
    port = free_udp_port()
    with nfcapd(tmp_path / "nfcapd", port) as collector:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for pdu in pdus:
                s.sendto(pdu, ("127.0.0.1", port))
        collector.stop()
    rows = collector.flows("%tevt|%nevt|%pr|%sa|%sp|%da|%dp|%xsa|%xsp|%xda|%xdp")
    assert sorted(rows) == sorted([
        ["2023-11-14 22:14:02.250", "ADD", "17", "10.99.2.1", "41000", "10.99.3.1", "5353",
         "10.99.3.254", "61000", "10.99.3.1", "5353"],
        ["2023-11-14 22:14:02.250", "DELETE", "17", "10.99.2.1", "41000", "10.99.3.1",
         "5353", "10.99.3.254", "61000", "10.99.3.1", "5353"],
        ["2023-11-14 22:14:02.250", "ADD", "6", "10.99.2.1", "40000", "10.99.2.254", "8080",
         "10.99.2.1", "40000", "10.99.3.1", "80"],
        ["2023-11-14 22:14:02.250", "DELETE", "6", "fd99:2::1", "47486", "fd99:3::1", "8080",
         "fd99:3::fe", "47486", "fd99:3::1", "8080"],
    ])


# --- NetFlow v5 pseudo-flows (seed: natevents) ----------------------------------------------


def v5_fields(pdus):
    return [f.data for p in decode(pdus) for f in p.flows]


def test_v5_pseudo_flow_snat_field_by_field():
    state = ExportState(boot_ns=BOOT)
    [rec] = v5_fields(nel.encode_v5([snat_event()], state, NOW))
    assert str(ipaddress.ip_address(rec["IPV4_SRC_ADDR"])) == "10.99.2.1"  # pre-NAT src
    assert rec["SRC_PORT"] == 41000
    assert str(ipaddress.ip_address(rec["IPV4_DST_ADDR"])) == "10.99.3.1"  # post-NAT dst
    assert rec["DST_PORT"] == 5353
    assert str(ipaddress.ip_address(rec["NEXT_HOP"])) == "10.99.3.254"  # post-NAT src addr
    assert rec["SRC_AS"] == 61000 and rec["DST_AS"] == 0  # post-NAT src port
    assert rec["TCP_FLAGS"] == TCP_SYN | TCP_ACK
    assert rec["IN_PACKETS"] == 0 and rec["IN_OCTETS"] == 0
    assert rec["FIRST_SWITCHED"] == rec["LAST_SWITCHED"] == 42_250
    assert rec["PROTO"] == 17


def test_v5_pseudo_flow_dnat_field_by_field():
    state = ExportState(boot_ns=BOOT)
    [rec] = v5_fields(nel.encode_v5([dnat_event(NAT_STOP)], state, NOW))
    assert str(ipaddress.ip_address(rec["IPV4_SRC_ADDR"])) == "10.99.2.1"
    assert str(ipaddress.ip_address(rec["IPV4_DST_ADDR"])) == "10.99.3.1"  # post-NAT dst
    assert rec["DST_PORT"] == 80
    assert str(ipaddress.ip_address(rec["NEXT_HOP"])) == "10.99.2.254"  # pre-NAT dst addr
    assert rec["DST_AS"] == 8080 and rec["SRC_AS"] == 0  # pre-NAT dst port
    assert rec["TCP_FLAGS"] == TCP_RST | TCP_FIN


def test_v5_pseudo_flow_full_nat_gives_two_records_and_ipv6_is_skipped():
    full = snat_event(dnat=True, dst_addr=ip("10.99.2.254"), dst_port=8080)
    state = ExportState(boot_ns=BOOT)
    tally = Tally()
    recs = v5_fields(nel.encode_v5([full, snat6_event()], state, NOW, tally))
    assert len(recs) == 2 and tally.skipped == 1
    assert {r["SRC_AS"] for r in recs} == {61000, 0} and {r["DST_AS"] for r in recs} == {0, 8080}
    assert state.flows == 2  # flow_sequence counts pseudo-flows
