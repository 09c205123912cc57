"""ctnetlink parsing and NAT event mapping, on messages recorded on a real kernel.

The recording (``data/``, made by :mod:`tests.ingest_conntrack.record_messages`) holds NEW and
DESTROY events and one table dump for: MASQUERADE TCP/UDP over IPv4 and IPv6, ICMP echo, a DNAT
port forward per family and one untranslated connection; ``meta.json`` is the ground truth.
"""

from __future__ import annotations

import socket
import struct

import pytest

from netflow_agent.model import NAT_START, NAT_STOP
from netflow_agent.plugins.ingest_conntrack import ctnetlink
from netflow_agent.plugins.ingest_conntrack.events import is_translated, to_nat_event
from tests.ingest_conntrack.recorded import datagrams, entries, meta

M = meta()
DNAT, CPORT = M["dnat_port"], M["client_port"]

# (protocol, pre src, pre dst, pre sport, pre dport, post src, post dst, post sport, post dport,
#  snat, dnat) for every translated connection of the recording
EXPECTED = {
    (6, M["client4"], M["server4"], 41000, 9000, M["router_out4"], M["server4"], 41000, 9000, 1, 0),
    (
        17,
        M["client4"],
        M["server4"],
        41001,
        9001,
        M["router_out4"],
        M["server4"],
        41001,
        9001,
        1,
        0,
    ),
    (6, M["client6"], M["server6"], 41002, 9000, M["router_out6"], M["server6"], 41002, 9000, 1, 0),
    (
        17,
        M["client6"],
        M["server6"],
        41003,
        9001,
        M["router_out6"],
        M["server6"],
        41003,
        9001,
        1,
        0,
    ),
    (
        6,
        M["server4"],
        M["router_out4"],
        42000,
        DNAT,
        M["server4"],
        M["client4"],
        42000,
        CPORT,
        0,
        1,
    ),
    (
        17,
        M["server6"],
        M["router_out6"],
        42001,
        DNAT,
        M["server6"],
        M["client6"],
        42001,
        CPORT,
        0,
        1,
    ),
}


def _summary(event):  # type: ignore[no-untyped-def]
    return (
        event.protocol,
        event.src_addr,
        event.dst_addr,
        event.src_port,
        event.dst_port,
        event.post_src_addr,
        event.post_dst_addr,
        event.post_src_port,
        event.post_dst_port,
        int(event.snat),
        int(event.dnat),
    )


def _translated(name: str, msg_type: int):  # type: ignore[no-untyped-def]
    return [e for e in entries(name) if e.msg_type == msg_type and is_translated(e)]


def test_new_events_map_to_expected_translations() -> None:
    new = _translated("events", ctnetlink.MSG_CT_NEW)
    got = {_summary(to_nat_event(e, NAT_START, 123)) for e in new if e.orig.protocol != 1}
    assert got == EXPECTED
    assert all(e.flags & ctnetlink.NLM_F_CREATE for e in new)


def test_destroy_events_carry_timestamps_and_counters() -> None:
    destroy = _translated("events", ctnetlink.MSG_CT_DELETE)
    events = [to_nat_event(e, NAT_STOP, 123) for e in destroy]
    assert {_summary(ev) for ev in events if ev.protocol != 1} == EXPECTED
    for entry, ev in zip(destroy, events, strict=True):
        assert 0 < entry.start_ns < entry.stop_ns == ev.time_ns  # kernel stop time, not "now"
        assert entry.stop_ns - entry.start_ns < 60 * 10**9
        assert ev.packets_orig >= 1 and ev.octets_orig >= 28
    tcp4 = next(ev for ev in events if ev.protocol == 6 and ev.src_port == 41000)
    assert (tcp4.packets_orig, tcp4.packets_reply) == (5, 3)


def test_start_time_is_now_without_timestamp() -> None:
    new = _translated("events", ctnetlink.MSG_CT_NEW)[0]
    assert new.start_ns == 0
    assert to_nat_event(new, NAT_START, 987654321).time_ns == 987654321


def test_icmp_echo_id_and_type() -> None:
    icmp = [e for e in entries("events") if e.orig.protocol == 1]
    assert {e.msg_type for e in icmp} == {ctnetlink.MSG_CT_NEW, ctnetlink.MSG_CT_DELETE}
    ev = to_nat_event(icmp[0], NAT_START, 1)
    assert ev.dst_port == 8 << 8 and ev.post_dst_port == 8 << 8  # echo request, code 0
    assert ev.src_port == ev.post_src_port  # echo identifier (masquerade kept it)
    assert ev.post_src_addr == M["router_out4"] and ev.snat


def test_untranslated_connection_is_recognised() -> None:
    plain = [e for e in entries("events") if not is_translated(e)]
    assert len(plain) == 2  # NEW and DESTROY of client -> router:9999
    assert all(e.orig.dst_addr == M["router_in4"] and e.orig.dst_port == 9999 for e in plain)


def test_dump_matches_events() -> None:
    dumped = entries("dump")
    destroyed = {
        (e.ct_id, e.orig) for e in entries("events") if e.msg_type == ctnetlink.MSG_CT_DELETE
    }
    assert {(e.ct_id, e.orig) for e in dumped} == destroyed
    assert all(e.start_ns and not e.stop_ns for e in dumped)
    last = datagrams("dump")[-1][1]
    assert [m.msg_type for m in ctnetlink.iter_messages(last, len(last))][
        -1
    ] == ctnetlink.NLMSG_DONE


def test_truncated_messages_raise_malformed() -> None:
    _label, data = datagrams("events")[0]
    with pytest.raises(ctnetlink.MalformedMessage):
        list(ctnetlink.iter_messages(data[:-8], len(data) - 8))
    msg = next(ctnetlink.iter_messages(data, len(data)))
    broken = bytearray(data)
    struct.pack_into("=H", broken, msg.start + 4, 0xFFF)  # first attribute runs past the end
    with pytest.raises(ctnetlink.MalformedMessage):
        ctnetlink.parse_conntrack(broken, msg.start, msg.end, msg.msg_type, msg.flags)
    with pytest.raises(ctnetlink.MalformedMessage):
        ctnetlink.parse_conntrack(data, msg.start, msg.start + 8, msg.msg_type, msg.flags)


def test_dump_request_layout() -> None:
    req = ctnetlink.dump_request(7)
    length, kind, flags, seq, pid = ctnetlink.NLMSGHDR.unpack_from(req)
    assert (length, kind, seq, pid) == (len(req), ctnetlink.MSG_CT_GET, 7, 0)
    assert flags == ctnetlink.NLM_F_REQUEST | ctnetlink.NLM_F_DUMP
    assert req[16:] == bytes([socket.AF_UNSPEC, 0, 0, 0])
