"""Link layers: the hot offset walk and the opt-in facts walk agree, and the facts are right."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from netflow_agent.linklayer import NOT_IP, TOO_DEEP, TRUNCATED, ethernet_facts
from netflow_agent.plugins.ingest_pcap import linktype as lt
from tests.fuzz.strategies import fuzz_settings
from tests.support.pcapgen import (
    ETHERTYPE_MPLS,
    LINKTYPE_ETHERNET,
    PcapBuilder,
    ethernet_frame,
    ipv4_packet,
    link_header,
    mpls_stack,
    pppoe_header,
)

IP = ipv4_packet(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 17, bytes(12))
SUPPORTED = sorted(lt.SUPPORTED)


def test_facts_of_a_tagged_mpls_frame() -> None:
    tags = struct.pack("!HHHH", 0x88A8, 0x2000 | 10, 0x8100, 0xE000 | 20)
    frame = (b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + tags + b"\x88\x47"
             + mpls_stack([16, 1000], tc=5) + IP)
    facts = ethernet_facts(frame)
    assert facts.ip_offset == 14 + 8 + 8 == lt.ip_offset(LINKTYPE_ETHERNET, frame)
    assert (facts.dst_mac, facts.src_mac) == (b"\x02\0\0\0\0\x02", b"\x02\0\0\0\0\x01")
    assert facts.vlans == ((0x88A8, 10, 1), (0x8100, 20, 7))
    assert [e >> 12 for e in facts.mpls] == [16, 1000]
    assert [(e >> 9 & 7, e >> 8 & 1, e & 0xFF) for e in facts.mpls] == [(5, 0, 64), (5, 1, 64)]
    assert (facts.ethertype, facts.payload_type, facts.reason) == (0x88A8, 0x8847, "")


def test_pseudowire_pppoe_and_snap() -> None:
    pw = (link_header(1, IP, ethertype=ETHERTYPE_MPLS) + mpls_stack([30]) + b"\0\0\0\0"
          + ethernet_frame(IP, vlans=(5,)))
    assert lt.ip_offset(1, pw) == len(pw) - len(IP)
    pppoe = link_header(1, IP, ethertype=0x8864) + pppoe_header(0x42, IP, 0x0800) + IP
    facts = lt.link_facts(1, pppoe)
    assert facts.ip_offset == 22 and facts.pppoe_session == 0x42 and facts.payload_type == 0x21
    snap = b"\x02" * 12 + struct.pack("!H", 8 + len(IP)) + b"\xaa\xaa\x03\0\0\0\x08\x00" + IP
    assert lt.ip_offset(1, snap) == 22
    multicast = b"\x02" * 12 + b"\x88\x48" + mpls_stack([5, 6]) + IP
    assert lt.ip_offset(1, multicast) == 22


def test_not_ip_reasons_and_bounds() -> None:
    arp = b"\x02" * 12 + b"\x08\x06" + bytes(28)
    assert lt.link_facts(1, arp) == lt.link_facts(1, arp)._replace(ip_offset=NOT_IP)
    assert lt.link_facts(1, arp).reason == "ethertype 0x0806"
    deep = b"\x02" * 12 + b"\x81\x00\x00\x01" * 9 + b"\x08\x00" + IP
    assert lt.ip_offset(1, deep) == TOO_DEEP == lt.link_facts(1, deep).ip_offset
    labels = b"\x02" * 12 + b"\x88\x47" + b"\x00\x01\x00\x40" * 17 + IP
    assert lt.ip_offset(1, labels) == TOO_DEEP
    assert lt.ip_offset(1, b"\x02" * 12 + b"\x88\x47\0\0") == TRUNCATED
    assert lt.link_facts(1, b"\x02" * 12 + b"\x88\x47" + mpls_stack([3]) + b"\x83") \
        .reason == "mpls payload not IP"
    assert lt.link_facts(4242, IP).reason == "linktype 4242"


def test_other_link_types() -> None:
    assert lt.ip_offset(lt.LINKTYPE_NULL, struct.pack(">I", 30) + IP) == 4  # big-endian host
    assert lt.ip_offset(lt.LINKTYPE_NULL, struct.pack("<I", 7) + IP) == NOT_IP
    assert lt.ip_offset(lt.LINKTYPE_PPP, b"\x21" + IP) == 1  # protocol field compression
    assert lt.ip_offset(lt.LINKTYPE_PPP_HDLC, b"\xff\x03\x00\x57" + IP) == 4
    assert lt.ip_offset(lt.LINKTYPE_C_HDLC, b"\x0f\x00\x08\x00" + IP) == 4
    tlv = struct.pack("<HH", 8, 1) + b"\x08\x00\0\0" + struct.pack("<HH", 4 + len(IP), 9)
    assert lt.ip_offset(lt.LINKTYPE_NFLOG, b"\x02\x00\x00\x05" + tlv + IP) == 16


def test_builder_frames_all_reach_the_ip_header() -> None:
    for kwargs in ({"vlans": (1, 2, 3)}, {"mpls": (1, 2)}, {"pppoe_session": 9},
                   {"vlans": (4,), "mpls": (5,), "mpls_pw": True}):
        b = PcapBuilder(**kwargs)  # type: ignore[arg-type]
        frame = b._frame(IP)
        assert frame[lt.ip_offset(1, frame):] == IP, kwargs


frames = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda head, rest: head + rest,
              st.sampled_from([b"\x02" * 12 + t for t in
                               (b"\x81\x00", b"\x88\x47", b"\x88\x64", b"\x00\x40",
                                b"\x91\x00", b"\x88\x48")]),
              st.binary(max_size=60)),
)


@fuzz_settings()
@given(st.sampled_from(SUPPORTED), frames)
def test_fast_and_facts_walks_agree(linktype: int, frame: bytes) -> None:
    assert lt.ip_offset(linktype, frame) == lt.link_facts(linktype, frame).ip_offset
