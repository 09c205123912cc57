"""The pure IPFIX encoder: golden bytes, RFC 7011 sequence numbers, sets, MTU, refresh."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netflow_agent.errors import EncodeError
from netflow_agent.plugins.export_ipfix import nel, options
from netflow_agent.plugins.export_ipfix.ipfix import (
    FLOW_LAYOUTS,
    HEADER,
    DataGroup,
    Session,
    Template,
    encode_flow_groups,
    encode_messages,
    encode_varlen,
    encode_withdrawals,
    message_totals,
)
from tests.export_ipfix.helpers import addr, flow, nat_event, sets_of
from tests.support.collectors import netflow_decode

# One IPv4 TCP flow, checked field by field by hand (see test_golden_ipv4_flow).
GOLDEN = bytes.fromhex(
    "000a0098692cb2a90000000000000007"  # version 10, length 152, export time, seq 0, odid 7
    "00020048"  # template set, 72 octets
    "01000010"  # template 256, 16 fields
    "000800040" "00c0004000700020" "00b0002000400010005000100060002"  # 8,12,7,11,4,5,6
    "000a0004000e0004003d0001003c00010088000100010008000200080098000800990008"  # 10..153
    "01000040"  # data set 256, 64 octets (59 + 1 padding)
    "0a0000010a00000204d2005006100" "01b0000000100000002000403"
    "00000000000000b40000000000000003"  # octetDeltaCount 180, packetDeltaCount 3
    "0000019ad699e0400000019ad699e13a00"  # flowStart/EndMilliseconds, padding
)


def encode(session: Session, records, max_length: int = 1472, now_ns: int = 0, **kw):
    groups = encode_flow_groups(records, lambda r, e: pytest.fail(f"{r}: {e}"))
    return encode_messages(session, groups, export_time=1764537001, max_length=max_length,
                           now_ns=now_ns, **kw)


def test_golden_ipv4_flow():
    r = flow(0, proto=6, src_addr=addr("10.0.0.1"), dst_addr=addr("10.0.0.2"), src_port=1234,
             dst_port=80, tos=0x10, packets=3, octets=180, start_ns=1764537000_000_000_000,
             end_ns=1764537000_250_999_999, tcp_flags=0x1B, end_reason=3)
    (m,) = encode(Session(7), [r])
    assert m.records == 1
    assert m.data == GOLDEN


def test_templates_cover_the_required_elements():
    v4 = {ie for ie, _ in FLOW_LAYOUTS[256].template.fields}
    assert {1, 2, 152, 153, 4, 5, 6, 7, 11, 8, 12, 10, 14, 61, 60, 136} <= v4
    assert dict(FLOW_LAYOUTS[256].template.fields)[1] == 8  # 64-bit counters
    assert dict(FLOW_LAYOUTS[256].template.fields)[2] == 8
    v6_icmp = {ie for ie, _ in FLOW_LAYOUTS[259].template.fields}
    assert {27, 28, 139} <= v6_icmp and not {7, 11} & v6_icmp
    v4_routed = {ie for ie, _ in FLOW_LAYOUTS[260].template.fields}
    assert {15, 9, 13} <= v4_routed
    v6_routed = {ie for ie, _ in FLOW_LAYOUTS[261].template.fields}
    assert {62, 29, 30} <= v6_routed
    assert all(t.scope_count > 0 for t in options.OPTIONS_TEMPLATES)


def test_nel_template_matches_ipt_netflow_order():
    tpl, _ = nel.NEL_LAYOUTS[nel.nel_template_id(False, False)]
    assert [ie for ie, _ in tpl.fields] == [323, 8, 12, 225, 226, 7, 11, 227, 228, 4, 230]
    tpl6, _ = nel.NEL_LAYOUTS[nel.nel_template_id(True, True)]
    assert [ie for ie, _ in tpl6.fields] == [323, 27, 28, 281, 282, 7, 11, 227, 228, 4, 230]


def test_sequence_counts_data_records_before_each_message():
    s = Session(1)
    msgs = encode(s, [flow(i) for i in range(100)], max_length=512)
    assert len(msgs) > 3
    expected = 0
    for m in msgs:
        version, length, _, seq, odid = HEADER.unpack_from(m.data)
        assert (version, length, seq, odid) == (10, len(m.data), expected, 1)
        expected += m.records
    assert expected == 100 == s.sequence
    more = encode(s, [flow(0)])  # templates already sent: data only, sequence continues
    assert HEADER.unpack_from(more[0].data)[3] == 100
    assert [sid for sid, _ in sets_of(more[0].data)] == [256]


def test_sequence_wraps_modulo_2_32():
    s = Session(1, sequence=(1 << 32) - 1)
    encode(s, [flow(0), flow(1)])
    assert s.sequence == 1


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), mtu=st.integers(200, 1500), v6=st.booleans())
def test_messages_fit_and_records_are_never_split(n, mtu, v6):
    records = [flow(i, v6=v6 and i % 2 == 0, proto=1 if i % 3 == 0 else 17) for i in range(n)]
    msgs = encode(Session(5), records, max_length=mtu)
    decoded = 0
    for m in msgs:
        assert len(m.data) <= mtu
        for set_id, body in sets_of(m.data):
            assert (4 + len(body)) % 4 == 0  # padded to 4 octets
            if set_id >= 256:
                size = FLOW_LAYOUTS[set_id].template.record_length
                assert len(body) % size < min(size, 4)  # whole records + short padding
                decoded += len(body) // size
    assert decoded == n == sum(m.records for m in msgs)
    _, flows = netflow_decode([m.data for m in msgs])
    assert sorted(f["packetDeltaCount"] for f in flows) == sorted(r.packets for r in records)


def test_refresh_by_packets_and_by_time():
    s = Session(1, refresh_packets=3, refresh_ns=10_000)
    with_templates = []
    for i in range(7):
        (m,) = encode(s, [flow(i)], now_ns=i)
        with_templates.append(any(sid == 2 for sid, _ in sets_of(m.data)))
    assert with_templates == [True, False, False, True, False, False, True]
    (m,) = encode(s, [flow(0)], now_ns=20_000)  # time-based
    assert sets_of(m.data)[0][0] == 2
    s.force_templates = True  # a collector became reachable again
    (m,) = encode(s, [flow(0)], now_ns=20_001)
    assert sets_of(m.data)[0][0] == 2


def _template_ids(message: bytes) -> set[int]:
    return {struct.unpack_from("!H", body)[0] for sid, body in sets_of(message) if sid == 2}


def test_a_new_template_does_not_postpone_the_refresh_of_the_others():
    """RFC 7011 section 8.4: every template is resent at least every ``refresh_packets``
    messages and ``refresh_ns``; announcing a new template (an IPv6 flow appears) is no
    refresh of the ones sent earlier (it used to restart both counters for all of them)."""
    s = Session(1, refresh_packets=3)
    (m,) = encode(s, [flow(0)], now_ns=0)  # 256 announced
    (m,) = encode(s, [flow(1, v6=True)], now_ns=1)  # 257 announced, 256 not resent
    assert _template_ids(m.data) == {257}
    (m,) = encode(s, [flow(2)], now_ns=2)
    (m,) = encode(s, [flow(3)], now_ns=3)  # 3 messages after 256 was sent: due again
    assert 256 in _template_ids(m.data)
    t = Session(1, refresh_ns=10_000)
    encode(t, [flow(0)], now_ns=0)
    encode(t, [flow(1, v6=True)], now_ns=9_000)
    (m,) = encode(t, [flow(2)], now_ns=10_000)  # 256 is 10 000 ns old
    assert 256 in _template_ids(m.data)


def test_template_precedes_data_of_a_new_layout_mid_stream():
    s = Session(1)
    encode(s, [flow(0)])
    (m,) = encode(s, [flow(1, v6=True)])
    ids = [sid for sid, _ in sets_of(m.data)]
    assert ids == [2, 257]


def test_too_small_message_is_an_encode_error():
    with pytest.raises(EncodeError):
        encode(Session(1), [flow(0, v6=True)], max_length=60)


def test_a_refused_group_leaves_the_session_as_if_it_was_never_offered():
    """``refused``: a group that fits no message is listed and left out, and the session
    (sequence, announced templates, refresh state, counts) and the messages are those of
    encoding the other groups alone, also when it came after groups sharing its message
    and with a template refresh due."""
    huge = Template(401, tuple((8, 4) for _ in range(600)))
    small = Template(400, ((8, 4), (12, 4)))
    good = [DataGroup(small, [bytes(8)] * 3), DataGroup(huge, [bytes(2400)]),
            DataGroup(small, [bytes(8)] * 2)]
    runs = []
    for groups in (good, [good[0], good[2]]):
        s = Session(1, refresh_packets=1)
        encode_messages(s, [DataGroup(small, [bytes(8)])], export_time=1, max_length=1400,
                        now_ns=0)
        refused: list[DataGroup] = []
        out = encode_messages(s, groups, export_time=1, max_length=1400, now_ns=0,
                              refused=refused)
        runs.append(([m.data for m in out], s, refused))
    (with_bad, s1, refused1), (without, s2, refused2) = runs
    assert refused1 == [good[1]] and not refused2
    assert with_bad == without and s1 == s2 and s1.sequence == 6
    assert list(s1.announced) == [400]


@pytest.mark.parametrize("refresh", [1, 2])
def test_a_record_that_fits_only_without_the_refresh_templates_still_leaves(refresh):
    """With a refresh due in every message (refresh_rate 1) the templates took the room a
    record needs, the record moved to a new message, which began with the refresh again:
    the encoder never returned. Now the templates go in a message of their own and the
    record in the next; the stream keeps RFC 7011's order (templates before data)."""
    small = Template(400, ((8, 4), (12, 4)))
    var = Template(404, ((149, 4), (82, 65535)), scope_count=1)
    session = Session(1, refresh_packets=refresh)
    encode_messages(session, [DataGroup(small, [bytes(8)])], export_time=1, max_length=1400,
                    now_ns=0)
    record = bytes(4) + encode_varlen(b"x" * (1400 - 16 - 4 - 7 - 3))  # fills a message
    refused: list = []
    out = encode_messages(session, [DataGroup(small, [bytes(8)]), DataGroup(var, [record])],
                          export_time=1, max_length=1400, now_ns=0, refused=refused)
    assert not refused and sum(m.records for m in out) == 2 and session.sequence == 3
    assert all(len(m.data) <= 1400 for m in out)


def test_the_refresh_of_every_template_at_a_small_mtu_and_refresh_rate_1_ends():
    """660 octets of flow and options templates, MTU 400: every message would begin with
    templates that leave no room for a record (hung at MTU 296-819 with refresh_rate 1)."""
    templates = [layout.template for layout in FLOW_LAYOUTS.values()] + list(
        options.OPTIONS_TEMPLATES)
    session = Session(1, refresh_packets=1)
    encode_messages(session, [], export_time=1, max_length=372, now_ns=0, templates=templates)
    for layout in FLOW_LAYOUTS.values():
        rows = [bytes(layout.template.record_length)] * 3
        out = encode_messages(session, [DataGroup(layout.template, rows)], export_time=1,
                              max_length=372, now_ns=0, refused=[])
        assert sum(m.records for m in out) == 3


def test_withdrawal_message():
    s = Session(3)
    encode(s, [flow(0)])
    tpl = options.METERING_STATS
    data = encode_withdrawals(s, [FLOW_LAYOUTS[256].template, tpl], 1764537001)
    assert sets_of(data) == [(2, struct.pack("!HH", 256, 0)),
                             (3, struct.pack("!HH", tpl.template_id, 0))]
    assert not s.announced


def test_varlen_encoding():
    assert encode_varlen(b"eth0") == b"\x04eth0"
    long = b"x" * 300
    assert encode_varlen(long) == b"\xff\x01\x2c" + long


def test_options_records_decode():
    stats = options.Statistics(messages=11, records=22, octets=33, observed_flows=44,
                               ignored_packets=55, ignored_octets=66, lost_records=77,
                               lost_packets=88, lost_octets=99, start_ms=1, end_ms=2)
    groups = options.statistics_groups(stats, 9, 9)
    msgs = encode_messages(Session(9), groups, export_time=1, max_length=1472, now_ns=0)
    _, recs = netflow_decode([m.data for m in msgs])
    by_key = {k: v for r in recs for k, v in r.items()}
    assert by_key["exportedMessageTotalCount"] == 11
    assert by_key["exportedFlowRecordTotalCount"] == 22
    assert by_key["ignoredPacketTotalCount"] == 55
    assert by_key["notSentFlowTotalCount"] == 77
    assert by_key["notSentOctetTotalCount"] == 99


def test_interface_names_are_variable_length():
    group = options.interface_names_group({2: "eth0", 1: "lo"}, 4)
    assert group is not None
    assert group.records[0] == struct.pack("!II", 4, 1) + b"\x02lo"
    msgs = encode_messages(Session(4), [group], export_time=1, max_length=1472, now_ns=0)
    assert message_totals(msgs[0].data, {options.INTERFACE_NAMES_ID: options.INTERFACE_NAMES}) \
        == (2, 0, 0)


def test_nel_values_and_time():
    events = [nat_event(0, True), nat_event(1, False), nat_event(2, True, v6=True)]
    fixed = []
    events.append(nat_event(3))
    events[-1].time_ns = 0  # missing timestamp: replaced, never 1970
    groups = nel.encode_nat_groups(events, "rfc8158", 1764537009_000_000_000, fixed.append)
    assert len(fixed) == 1
    msgs = encode_messages(Session(1), groups, export_time=1, max_length=1472, now_ns=0)
    _, recs = netflow_decode([m.data for m in msgs])
    assert sorted(r["natEvent"] for r in recs) == [4, 4, 4, 5]
    assert min(r["observationTimeMilliseconds"] for r in recs) >= 1764537000000
    legacy = nel.encode_nat_groups(events[:2], "legacy", 0, fixed.append)
    assert [rec[-1] for g in legacy for rec in g.records] == [1, 2]


def test_message_totals_for_loss_accounting():
    records = [flow(i) for i in range(10)]
    msgs = encode(Session(1), records)
    templates = {tid: layout.template for tid, layout in FLOW_LAYOUTS.items()}
    assert message_totals(msgs[0].data, templates) == (
        10, sum(r.packets for r in records), sum(r.octets for r in records))


def test_out_of_range_record_is_counted_not_fatal():
    bad = flow(1, in_if=1 << 40)
    errors = []
    groups = encode_flow_groups([flow(0), bad, flow(2)], lambda r, e: errors.append(r))
    assert errors == [bad]
    assert sum(len(g.records) for g in groups) == 2


def test_template_validation():
    with pytest.raises(ValueError):
        Template(255, ((1, 8),))
    with pytest.raises(ValueError):
        Template(300, ((99999, 8),))
    assert DataGroup(options.METERING_STATS, []).records == []
