"""IPFIX over TCP: collector restart, spool bound, spill file, in-flight loss accounting.

A small Python collector (tests/export_ipfix/helpers.py) accepts connections and splits the
stream into messages; the PyPI ``netflow`` package decodes each session on its own (template
state never crosses transport sessions, RFC 7011 section 8).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

from netflow_agent.plugins.export_ipfix.component import IpfixExporter
from netflow_agent.plugins.export_ipfix.config import Config
from netflow_agent.runtime import RunContext
from tests.export_ipfix.helpers import (
    HEADER,
    TcpCollector,
    decodable,
    flow,
    nat_event,
    sets_of,
)
from tests.support.collectors import netflow_decode
from tests.support.wireaudit import WireAudit


def make_exporter(port: int, tmp_path, **kw) -> IpfixExporter:
    values = dict(destination=[f"127.0.0.1:{port}"], transport="tcp", natevents=True,
                  reconnect_interval_s=0.05, reconnect_max_interval_s=0.2,
                  options_interval_s=0, spool_dir=str(tmp_path / "spool"),
                  observation_domain_id=5)
    values.update(kw)
    exporter = IpfixExporter(Config(**values), "export.ipfix[0]")
    exporter.agent_start(RunContext(state_dir=str(tmp_path)))
    return exporter


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tick_until(exporter: IpfixExporter, predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exporter.agent_tick(now_ns=time.time_ns())
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def session_flows(messages: list[bytes]) -> list[tuple[str, int]]:
    """(source address, source port) of every flow in one session, decoded by `netflow`."""
    data = [m for m in messages if not _is_withdrawal(m)]
    _, records = netflow_decode(decodable(data, udp=False), udp=False)
    out = []
    for r in records:
        if "packetDeltaCount" in r:
            out.append((str(ipaddress.ip_address(r["sourceIPv4Address"])),
                        r["sourceTransportPort"]))
    return out


def _is_withdrawal(message: bytes) -> bool:
    return all(sid in (2, 3) and len(body) % 4 == 0 and
               all(struct.unpack_from("!HH", body, i)[1] == 0 for i in range(0, len(body), 4))
               for sid, body in sets_of(message))


def key(r) -> tuple[str, int]:
    return str(ipaddress.ip_address(r.src_addr)), r.src_port


def check_sequences(messages: list[bytes]) -> None:
    """Per session: sequence starts at 0 and counts data records of earlier messages."""
    expected = 0
    for m in messages:
        seq = HEADER.unpack_from(m)[3]
        assert seq == expected
        expected += _records(m)


def _records(m: bytes) -> int:
    from netflow_agent.plugins.export_ipfix.ipfix import message_totals

    templates = IpfixExporter(Config(destination=["127.0.0.1:1"], natevents=True),
                              "t").templates
    return message_totals(m, templates)[0]


def test_collector_restart_delivers_everything_once_in_order(tmp_path):
    collector = TcpCollector().start()
    exporter = make_exporter(collector.port, tmp_path)
    try:
        tick_until(exporter, lambda: exporter.tcp[0].connected)
        before = [flow(i) for i in range(100)]
        exporter.agent_export_flows(records=before)
        collector.wait_for(lambda c: len(session_flows(c.messages())) == 100)
        collector.stop()  # reads everything that arrived, then closes

        during = [flow(i) for i in range(100, 400)]
        for i in range(0, 300, 50):  # produced while the collector is down
            exporter.agent_export_flows(records=during[i:i + 50])
            exporter.agent_tick(now_ns=time.time_ns())
        exporter.agent_export_nat_events(events=[nat_event(0), nat_event(0, start=False)])
        assert not exporter.tcp[0].connected
        assert len(exporter.tcp[0].spool) == 302

        collector.start()  # same port
        tick_until(exporter, lambda: exporter.tcp[0].connected and not exporter.tcp[0].spool)
        after = [flow(i) for i in range(400, 450)]
        exporter.agent_export_flows(records=after)
    finally:
        exporter.agent_stop()
        collector.stop()

    assert len(collector.sessions) == 2
    first, second = (session_flows(s) for s in collector.sessions)
    assert first == [key(r) for r in before]
    assert second == [key(r) for r in during + after]  # in order, none twice
    stats = exporter.agent_collect_stats()
    assert stats["lost_records"] == 0
    tcp = stats["destinations"]["127.0.0.1:" + str(collector.port)]
    assert tcp["lost_in_flight"] == 0 and tcp["connects"] == 2
    for session in collector.sessions:
        assert sets_of(session[0])[0][0] == 2  # templates open every session
        check_sequences(session)
    assert _is_withdrawal(collector.sessions[1][-1])  # withdrawal at shutdown
    for session in collector.sessions:  # every message to the RFC (withdrawals allowed: TCP)
        WireAudit(udp=False).feed_all(session).assert_clean()
    audit = WireAudit(udp=False).feed_all(collector.sessions[1])
    # RFC 7011 section 8.1: the shutdown withdrew every template the session announced
    assert audit.withdrawals and not any(s.templates for s in audit.streams.values())
    _, nel = netflow_decode(decodable(collector.sessions[1][:-1], udp=False), udp=False)
    assert sorted(r["natEvent"] for r in nel if "natEvent" in r) == [1, 2]


def test_spool_limit_counts_what_it_dropped(tmp_path):
    port = free_tcp_port()  # nothing listens yet
    exporter = make_exporter(port, tmp_path, spool_max_records=50, spool_memory_records=20,
                             options_interval_s=3600)
    collector = TcpCollector(port)
    try:
        records = [flow(i) for i in range(120)]
        exporter.agent_export_flows(records=records)
        stats = exporter.statistics()
        assert stats.lost_records == 70
        assert stats.lost_packets == sum(r.packets for r in records[50:])
        assert stats.lost_octets == sum(r.octets for r in records[50:])
        assert exporter.tcp[0].spool.spilled > 0  # beyond 20 in memory went to the file
        collector.start()
        tick_until(exporter, lambda: exporter.tcp[0].connected and not exporter.tcp[0].spool)
        exporter._send_options()
    finally:
        exporter.agent_stop()
        collector.stop()
    flows = [f for s in collector.sessions for f in session_flows(s)]
    assert flows == [key(r) for r in records[:50]]
    _, recs = netflow_decode(decodable(collector.sessions[0][:-1], udp=False), udp=False)
    assert any(r.get("notSentFlowTotalCount") == 70 for r in recs)


def test_spool_survives_agent_restart(tmp_path):
    port = free_tcp_port()
    exporter = make_exporter(port, tmp_path, spool_memory_records=10, flush_timeout_s=0)
    records = [flow(i) for i in range(40)]
    exporter.agent_export_flows(records=records)
    exporter.agent_stop()  # collector never came: records kept in the spool file
    assert exporter.agent_collect_stats()["lost_records"] == 0

    collector = TcpCollector(port).start()
    exporter = make_exporter(port, tmp_path)
    try:
        tick_until(exporter, lambda: exporter.tcp[0].connected and not exporter.tcp[0].spool)
    finally:
        exporter.agent_stop()
        collector.stop()
    assert [f for s in collector.sessions for f in session_flows(s)] == [key(r) for r in records]


def test_records_in_flight_when_the_connection_breaks_are_counted(tmp_path):
    """A collector that stops reading, then resets: unacknowledged records are counted."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    exporter = make_exporter(listener.getsockname()[1], tmp_path, sndbuf=4096)
    try:
        conn, _ = listener.accept()
        tick_until(exporter, lambda: exporter.tcp[0].connected)
        for i in range(0, 3000, 100):
            exporter.agent_export_flows(records=[flow(j) for j in range(i, i + 100)])
        dest = exporter.tcp[0]
        dest.poll()
        assert dest.stats.records > dest.stats.acked_records  # some are not acknowledged
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # RST
        time.sleep(0.05)
        dest.poll()
        assert not dest.connected
    finally:
        exporter.agent_stop()
        listener.close()
    s = dest.stats
    assert s.lost_in_flight > 0
    assert s.records == s.acked_records + s.lost_in_flight  # every record is accounted for
    assert exporter.statistics().lost_records == s.lost_in_flight + \
        exporter.counters["lost_records"]
