"""The encoders' tight loop for whole packets (v9 ``_PacketBuilder.full_packets`` and
``template_packet``, the packet a template refresh opens; IPFIX
``_MessageBuilder._full_messages``) writes exactly the bytes, tallies and session state of
the per-packet builder it bypasses: every export below is encoded twice, once with the loop
switched off, across MTUs, template refresh cadences, forced templates and a mix of the
flow templates (IPv4/IPv6, ICMP, routed) in several export calls."""

from __future__ import annotations

import pytest

from netflow_agent.api import FlowBatch, FlowRecord
from netflow_agent.plugins.export_ipfix import ipfix
from netflow_agent.plugins.export_netflow import v9
from netflow_agent.plugins.export_netflow.state import ExportState

T0 = 1_760_000_000_000_000_000


def mixed_flows(n: int) -> list[FlowRecord]:
    """``n`` flows over the four templates' classes: v4/v6, ICMP or UDP, routed or not."""
    out = []
    for i in range(n):
        v6 = i % 3 == 0
        alen = 16 if v6 else 4
        addr = (i + 1).to_bytes(alen, "big")
        out.append(FlowRecord(
            6 if v6 else 4, (58 if v6 else 1) if i % 5 == 0 else 17, addr, addr[::-1],
            i % 60000, 53, packets=i % 7 + 1, octets=100 * (i % 7 + 1) + i % 13,
            start_ns=T0 - 5_000_000_000 + i, end_ns=T0 - 1_000_000_000 + i,
            next_hop=bytes(alen - 1) + b"\x01" if i % 4 == 0 else b"",
            src_mask=24 if i % 4 == 0 else 0))
    return out


FLOWS = mixed_flows(9000)
PARTS = [FLOWS[i:i + 2500] for i in range(0, len(FLOWS), 2500)]


def encode_v9(mtu: int, refresh: int, counters64: bool) -> tuple[list[bytes], list, int]:
    state = ExportState(boot_ns=T0 - 10**12)
    templates = v9.flow_templates(counters64)
    policy = v9.RefreshPolicy(mtu=mtu, refresh_packets=refresh)
    tally = v9.Tally()
    out: list[bytes] = []
    for k, part in enumerate(PARTS):
        state.force_templates = k == 2
        out += v9.encode_flows(FlowBatch.from_records(part, "cache"), state, templates,
                               policy, T0 + k * 10**9, counters64=counters64, tally=tally)
    return out, list(tally.records), state.packets


def _template_packet_by_parts(builder, tpl, block, i, k, data):
    """The refresh packet as the per-packet builder writes it: the template, the records,
    the header."""
    builder.add_template(tpl)
    builder.add_data(tpl, block[i * tpl.size:(i + k) * tpl.size], k, data)
    builder.flush()
    return i + k


@pytest.mark.parametrize("mtu", [576, 1400, 9000])
@pytest.mark.parametrize("refresh", [1, 3, 20])
@pytest.mark.parametrize("counters64", [False, True])
def test_v9_whole_packets_are_the_builders_bytes(monkeypatch, mtu, refresh, counters64):
    fast = encode_v9(mtu, refresh, counters64)
    monkeypatch.setattr(v9._PacketBuilder, "packets_before_template", lambda self, tpl: 0)
    monkeypatch.setattr(v9._PacketBuilder, "template_packet", _template_packet_by_parts)
    slow = encode_v9(mtu, refresh, counters64)
    assert len(fast[0]) > 10 and fast == slow


def encode_ipfix(mtu: int, refresh: int, micro: bool) -> tuple[list[tuple[bytes, int]], tuple]:
    session = ipfix.Session(7, refresh_packets=refresh, refresh_ns=2 * 10**9 if refresh else 0)
    layouts = ipfix.FLOW_LAYOUTS_US if micro else ipfix.FLOW_LAYOUTS
    out: list[tuple[bytes, int]] = []
    for k, part in enumerate(PARTS):
        session.force_templates = k == 2
        groups = ipfix.encode_flow_groups(FlowBatch.from_records(part, "cache"),
                                          lambda r, e: None, layouts)
        out += [(m.data, m.records) for m in ipfix.encode_messages(
            session, groups, export_time=1_760_000_000 + k, max_length=mtu,
            now_ns=k * 700_000_000)]
    state = (session.sequence, session.messages, session.records, session.octets,
             session.messages_since_templates, session.templates_sent_ns)
    return out, state


@pytest.mark.parametrize("mtu", [576, 1400, 9000])
@pytest.mark.parametrize("refresh", [0, 3, 20])
@pytest.mark.parametrize("micro", [False, True])
def test_ipfix_whole_messages_are_the_builders_bytes(monkeypatch, mtu, refresh, micro):
    fast = encode_ipfix(mtu, refresh, micro)
    monkeypatch.setattr(ipfix._MessageBuilder, "_full_messages",
                        lambda self, template, block, i, n: i)
    slow = encode_ipfix(mtu, refresh, micro)
    assert len(fast[0]) > 10 and fast == slow
