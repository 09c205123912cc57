"""IPFIX over UDP hands a whole export part to each destination at once (one ``sendmmsg``
unpaced, one put into the paced backlog), as NetFlow v9 does, and still counts every lost
message on its own, with its records' packets and octets; the sequence numbers stay those of
the stream (RFC 7011 section 3.1: a lost message's records still count)."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

import netflow_agent.transport.udp as udp
from netflow_agent.plugins.export_ipfix.component import IpfixExporter
from netflow_agent.plugins.export_ipfix.config import Config
from netflow_agent.plugins.export_ipfix.ipfix import HEADER, DataGroup, Template, message_totals
from netflow_agent.runtime import RunContext
from netflow_agent.transport.pacing import PacedSender
from tests.export_ipfix.helpers import flow
from tests.export_netflow.collect import full_socket
from tests.support.collectors import UdpSink
from tests.support.sendcalls import count_send_calls
from tests.support.wireaudit import WireAudit

RECORDS = [flow(i) for i in range(400)]  # ~17 messages at the default MTU


def start(port: int, **cfg: object) -> IpfixExporter:
    cfg.setdefault("rate_limit", 0)  # unpaced unless a test paces
    exporter = IpfixExporter(Config(destination=[f"127.0.0.1:{port}"], options_interval_s=0,
                                    **cfg), "export.ipfix[0]")
    exporter.agent_start(RunContext())
    return exporter


def export_unpaced() -> tuple[IpfixExporter, dict, list[bytes], int]:
    """RECORDS exported unpaced to a sink: the exporter, its stats after the part, the
    messages the sink got, the sink's port (the exporter stopped)."""
    with UdpSink() as sink:
        exporter = start(sink.port)
        exporter.agent_export_flows(records=RECORDS)
        stats = exporter.agent_collect_stats()
        got = sink.wait(stats["udp_messages"])
        exporter.agent_stop()
    return exporter, stats, got, sink.port


def sequence(message: bytes) -> int:
    return HEADER.unpack_from(message)[3]


@pytest.fixture
def no_gso(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(udp.UdpDestination, "use_gso", False)


def test_an_unpaced_part_leaves_in_one_sendmmsg(monkeypatch, no_gso):
    calls = count_send_calls(monkeypatch)
    exporter, stats, got, port = export_unpaced()
    assert stats["udp_messages"] > 5
    assert calls == [stats["udp_messages"]]  # the whole part, one call
    assert stats["udp_records"] == len(RECORDS) and stats["lost_records"] == 0
    assert len(got) == stats["udp_messages"]


def test_a_paced_part_goes_into_the_backlog_in_one_put(monkeypatch):
    puts: list[int] = []
    real = PacedSender.put

    def counting(self, datagrams, records, wait_s=0.0):
        puts.append(len(datagrams))
        return real(self, datagrams, records, wait_s)

    monkeypatch.setattr(PacedSender, "put", counting)
    with UdpSink() as sink:
        exporter = start(sink.port, rate_limit=100_000)
        exporter.agent_export_flows(records=RECORDS)
        exporter.agent_stop()
        stats = exporter.agent_collect_stats()
        sink.wait(stats["udp_messages"])
    assert puts == [stats["udp_messages"]] and stats["udp_messages"] > 5
    assert stats["udp_records"] == len(RECORDS) and stats["lost_records"] == 0


def test_a_message_refused_inside_a_part_is_lost_alone_and_keeps_its_sequence(
        monkeypatch, no_gso):
    """The kernel refuses the third message of a part (send buffer full): that message is
    lost with its packets and octets, the others arrive, and the next message's sequence
    number still counts the lost records (the collector sees the gap)."""
    real = udp.send_burst
    refused: list[bytes] = []

    def refuse_third(fd, datagrams, pos, count, gso_max):
        if refused or not pos <= 2 < pos + count:
            return real(fd, datagrams, pos, count, gso_max)
        sent = real(fd, datagrams, pos, 2 - pos, gso_max)[0] if pos < 2 else 0
        refused.append(datagrams[2])
        return sent, errno.EAGAIN, 0

    monkeypatch.setattr(udp, "send_burst", refuse_third)
    exporter, stats, got, port = export_unpaced()
    lost, packets, octets = message_totals(refused[0], exporter.templates)
    assert lost > 0 and len(got) == stats["udp_messages"]
    assert (stats["lost_records"], stats["lost_packets"], stats["lost_octets"]) == (
        lost, packets, octets)
    assert stats["udp_records"] == len(RECORDS) - lost
    dest = stats["destinations"][f"127.0.0.1:{port}"]
    assert (dest["fail"], dest["err_sndbuf"], dest["lost_records"]) == (1, 1, lost)
    assert sequence(got[2]) == sequence(refused[0]) + lost  # the gap is the lost records
    assert exporter.session.sequence == len(RECORDS)


def test_a_full_send_buffer_loses_the_part_and_the_sequence_goes_on(no_gso):
    exporter = start(9)
    dest = exporter.udp[0]
    dest._sock.close()
    dest._sock, peer = full_socket()
    first = RECORDS[:100]
    exporter.agent_export_flows(records=first)
    stats = exporter.agent_collect_stats()
    assert (stats["udp_messages"], stats["udp_records"], stats["udp_octets"]) == (0, 0, 0)
    assert stats["lost_records"] == len(first)
    assert stats["lost_packets"] == sum(r.packets for r in first)
    assert stats["lost_octets"] == sum(r.octets for r in first)
    with UdpSink() as sink:  # the collector's socket is writable again
        dest._sock.close()
        dest._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dest._sock.connect(("127.0.0.1", sink.port))
        exporter.agent_export_flows(records=RECORDS[100:110])
        got = sink.wait(1)
        exporter.agent_stop()
    peer.close()
    assert sequence(got[0]) == len(first)
    assert exporter.agent_collect_stats()["udp_records"] == 10


def test_a_full_backlog_counts_the_messages_it_refused():
    """A paced backlog of 2 messages and a part of more: the put takes what fits, the rest
    is lost at once with its packets and octets; nothing is counted twice at stop."""
    with UdpSink() as sink:
        exporter = start(sink.port, rate_limit=10, backlog=2, flush_timeout_s=0)
        exporter.agent_export_flows(records=RECORDS)
        during = exporter.agent_collect_stats()
        exporter.agent_stop()
        stats = exporter.agent_collect_stats()
    dest = stats["destinations"][f"127.0.0.1:{sink.port}"]
    assert during["lost_records"] > 0
    assert stats["udp_records"] + stats["lost_records"] == len(RECORDS)
    assert stats["udp_messages"] == dest["packets_ok"]
    assert dest["lost_records"] == stats["lost_records"]


def test_the_backlog_left_at_close_is_lost_and_counted_by_the_stop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages still in the paced backlog when the close gives up are counted lost by
    ``agent_stop`` itself (no stats read follows a stop: the control socket is closed first),
    once, with their records: handed over = sent + lost."""
    monkeypatch.setattr(udp, "MAX_CLOSE_S", 0.2)
    records = [flow(i) for i in range(2000)]
    with UdpSink() as sink:
        exporter = start(sink.port, rate_limit=20, backlog=1000, flush_timeout_s=0)
        exporter.agent_export_flows(records=records)
        exporter.agent_stop()
        after_stop = dict(exporter.counters)
        stats = exporter.agent_collect_stats()
    dest = exporter.udp[0].stats
    assert after_stop["lost_records"] > 0
    assert after_stop["udp_records"] + after_stop["lost_records"] == len(records)
    assert after_stop["udp_messages"] == dest.packets_ok
    assert stats["lost_records"] == after_stop["lost_records"] == dest.lost_records


def test_a_lost_options_message_with_the_sampler_on_balances() -> None:
    """With the flow sampler on, the options include a selector statistics record; a full
    socket loses every message, and the records lost are those handed over (the
    destination's count), not one short per options message."""
    from netflow_agent.model import SAMPLING_DETERMINISTIC

    core = {"exported_flows": 40, "sampler_unselected_flows": 360, "traffic_packets": 1000,
            "memtraf_packets": 100, "sampler_discarded_packets": 5000}
    ctx = RunContext(core_stats=lambda: core)
    exporter = IpfixExporter(Config(destination=["127.0.0.1:9"], rate_limit=0,
                                    options_interval_s=60), "export.ipfix[0]")
    exporter.agent_start(ctx)
    ctx.declare_sampling("cache", 10, SAMPLING_DETERMINISTIC, flows=True)
    dest = exporter.udp[0]
    dest._sock.close()
    dest._sock, _peer = full_socket()
    handed: list[int] = []
    send_batch = dest.send_batch

    def counting(datagrams: list[bytes], records: list[int], wait_s: float = 0.0) -> object:
        handed.extend(records)
        return send_batch(datagrams, records, wait_s)

    dest.send_batch = counting  # type: ignore[method-assign]
    exporter.agent_export_flows(records=RECORDS[:5])
    exporter._send_options()
    stats = exporter.agent_collect_stats()
    assert stats["udp_records"] + stats["lost_records"] == sum(handed) > 5
    assert stats["destinations"]["127.0.0.1:9"]["lost_records"] == stats["lost_records"]


SMALL = Template(400, ((8, 4), (12, 4), (2, 8), (1, 8)))  # addresses, packets, octets
HUGE = Template(401, tuple((8, 4) for _ in range(600)))  # 2,400+ octets: fits no message
SMALL_RECORD = struct.pack("!4s4sQQ", b"\n\0\0\1", b"\n\0\0\2", 3, 300)


def test_a_group_the_message_encoder_refuses_leaves_the_others_and_the_session_intact():
    """A part whose second group fits no message (a record or template too large for the
    ``mtu``): that group alone is refused, counted lost with its packets and octets; the
    first group reaches the collector with its template, and the next part's data sets
    decode with the template known and the sequence numbers counting only what was sent
    (RFC 7011 sections 3.1, 8). Before: the whole part was dropped, but the session kept
    the first group's template as announced and its records in the sequence, so the
    collector got data sets of a template it never saw and a sequence gap."""
    with UdpSink() as sink:
        exporter = start(sink.port)
        exporter.templates.update({400: SMALL, 401: HUGE})
        exporter._send_udp([DataGroup(SMALL, [SMALL_RECORD] * 5),
                            DataGroup(HUGE, [bytes(2400)] * 2)])
        exporter._send_udp([DataGroup(SMALL, [SMALL_RECORD] * 5)])
        got = sink.wait(2)
        stats = exporter.agent_collect_stats()
        exporter.agent_stop()
    audit = WireAudit(udp=True).feed_all(got)
    audit.assert_clean()  # template before data, sequence = records sent before
    assert [r.template for r in audit.records] == [400] * 10
    assert stats["encode_errors"] == 1 and stats["lost_records"] == 2
    assert stats["udp_records"] == 10 and stats["sequence"] == 10
    assert stats["lost_packets"] == 0  # not flow records: the probe's template has none


def test_mirrored_destinations_each_count_the_records_the_encoder_refused():
    """Two mirrored collectors: records the encoder refuses (a group too large for a
    message, flows with a start before the epoch) reach neither, so each counts them lost,
    as each counts the messages it loses and as NetFlow does (``sockN.lost_records``): per
    destination, records handed = sent + lost. Before: a refusal was counted once, and
    ``udp_records + lost_records`` fell short of twice the records handed."""
    bad = [flow(i, start_ns=-5_000_000_000, end_ns=-4_000_000_000) for i in range(3)]
    with UdpSink() as a, UdpSink() as b:
        exporter = IpfixExporter(Config(destination=[a.endpoint, b.endpoint],
                                        options_interval_s=0, rate_limit=0), "export.ipfix[0]")
        exporter.agent_start(RunContext())
        exporter.templates.update({400: SMALL, 401: HUGE})
        exporter.agent_export_flows(records=RECORDS[:50] + bad)
        exporter._send_udp([DataGroup(SMALL, [SMALL_RECORD] * 5),
                            DataGroup(HUGE, [bytes(2400)] * 2)])
        stats = exporter.agent_collect_stats()
        exporter.agent_stop()
    handed = 50 + 3 + 5 + 2
    assert stats["encode_errors"] == 3 + 1
    assert stats["udp_records"] + stats["lost_records"] == 2 * handed
    assert stats["lost_packets"] == 2 * sum(r.packets for r in bad) > 0
    for d in (a, b):
        assert stats["destinations"][d.endpoint]["lost_records"] == 3 + 2
