""":class:`tests.support.wireaudit.WireAudit` on hand-built packets: what it must flag and
what it must accept (each case one the agent's encoders cannot produce on purpose)."""

from __future__ import annotations

import struct

import pytest

from tests.support.collectors import netflow_decode
from tests.support.wireaudit import IPFIX_HEADER, SET, V5_HEADER, V5_RECORD, V9_HEADER, WireAudit


def v5(secs: int, uptime: int, seq: int = 0, engine: tuple[int, int] = (0, 0),
       nsecs: int = 0) -> bytes:
    """A v5 packet with one (empty) record."""
    return (V5_HEADER.pack(5, 1, uptime, secs, nsecs, seq, *engine, 0)
            + V5_RECORD.pack(*([b"\0" * 4] * 3), *([0] * 16), b"\0\0"))


def flowset(set_id: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return SET.pack(set_id, 4 + len(body)) + body


def v9(seq: int, *sets: bytes, count: int) -> bytes:
    return V9_HEADER.pack(9, count, 1000 + seq, 1_700_000_000, seq, 1) + b"".join(sets)


def ipfix(seq: int, *sets: bytes) -> bytes:
    body = b"".join(sets)
    return IPFIX_HEADER.pack(10, 16 + len(body), 1_700_000_000, seq, 1) + body


def template(tid: int, *fields: tuple[int, int]) -> bytes:
    return struct.pack("!HH", tid, len(fields)) + b"".join(struct.pack("!HH", *f)
                                                            for f in fields)


def options_template(tid: int, scope: tuple[int, int], field: tuple[int, int]) -> bytes:
    """IPFIX options template record: one scope field, one option field."""
    return struct.pack("!HHHHHHH", tid, 2, 1, *scope, *field)


def test_v5_unix_time_three_seconds_back_is_flagged():
    """sysUpTime goes on, the unix time steps back 3 s (more than 2^31 ns)."""
    audit = WireAudit().feed_all([v5(1000, 5000), v5(997, 6000, seq=1)])
    assert any("header time" in p for p in audit.problems), audit.problems


def test_v5_sysuptime_may_wrap():
    audit = WireAudit().feed_all([v5(1000, 0xFFFFFF00), v5(1001, 0x100, seq=1)])
    audit.assert_clean()


def test_v5_engine_type_makes_a_stream_of_its_own():
    audit = WireAudit().feed_all([v5(1000, 1, engine=(1, 5)), v5(1000, 1, engine=(2, 5))])
    audit.assert_clean()
    assert len(audit.streams) == 2


@pytest.mark.parametrize(("version", "udp", "flagged"), [
    (9, True, False), (10, True, False), (10, False, True)])
def test_template_redefinition_is_an_error_only_for_ipfix_over_tcp_or_file(version, udp,
                                                                           flagged):
    """v9 cannot withdraw, IPFIX over UDP need not (RFC 7011 8.4); the data after the new
    definition is read with it."""
    old, new = template(256, (8, 4), (2, 4)), template(256, (8, 4), (2, 8))
    data_old = flowset(256, b"\x0a\0\0\1" + struct.pack("!I", 7))
    data_new = flowset(256, b"\x0a\0\0\1" + struct.pack("!Q", 9))
    if version == 9:
        packets = [v9(0, flowset(0, old), data_old, count=2),
                   v9(1, flowset(0, new), data_new, count=2)]
    else:
        packets = [ipfix(0, flowset(2, old), data_old), ipfix(1, flowset(2, new), data_new)]
    audit = WireAudit(udp=udp).feed_all(packets)
    assert bool(audit.problems) == flagged, audit.problems
    assert [r.values[2] for r in audit.flows()] == [7, 9]


def test_withdrawing_all_templates_keeps_the_options_templates():
    """RFC 7011 8.1: Template ID 2 in a Template Set withdraws the templates, not the
    options templates (Template ID 3 in an Options Template Set does that)."""
    opts = flowset(3, options_template(257, (149, 4), (34, 4)))
    packets = [ipfix(0, flowset(2, template(256, (8, 4))), opts),
               ipfix(0, flowset(2, struct.pack("!HH", 2, 0))),
               ipfix(0, flowset(257, struct.pack("!II", 1, 100)))]
    audit = WireAudit(udp=False).feed_all(packets)
    audit.assert_clean()
    assert [r.values[34] for r in audit.records if r.options] == [100]
    gone = WireAudit(udp=False).feed_all(
        [packets[0], ipfix(0, flowset(3, struct.pack("!HHH", 3, 0, 0))), packets[2]])
    assert any("before its template" in p for p in gone.problems), gone.problems


def test_netflow_decode_audits_with_the_transport_it_is_told():
    """A redefinition without withdrawal is fine over UDP (the default), an error in a TCP
    session or file."""
    packets = [ipfix(0, flowset(2, template(256, (8, 4), (2, 4))),
                     flowset(256, b"\x0a\0\0\1" + struct.pack("!I", 7))),
               ipfix(1, flowset(2, template(256, (8, 4), (2, 8))),
                     flowset(256, b"\x0a\0\0\1" + struct.pack("!Q", 9)))]
    _, flows = netflow_decode(packets)
    assert [f["packetDeltaCount"] for f in flows] == [7, 9]
    with pytest.raises(AssertionError, match="redefined without withdrawal"):
        netflow_decode(packets, udp=False)
