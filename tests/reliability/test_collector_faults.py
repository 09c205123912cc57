"""Collectors that refuse, never read, answer slowly, or come back: ingest never waits.

The real pipeline (config validation, ``ingest.pcap`` replay, cache, the NetFlow and IPFIX
exporters) runs in this process so every counter can be read after shutdown. A capture of 3000
one-packet UDP flows spread over 30 s of capture time (``inactive_timeout = 1``, so exports
happen throughout the replay, not only at the end) is replayed at full speed. Checked per
fault:

* the replay and the shutdown finish in bounded time (ingest never blocks on a collector);
* no hook raised (``hook_errors`` empty);
* every record is delivered or counted: for IPFIX over TCP ``flows_in == acked_records +
  lost_in_flight + lost_records`` (spool refusals and records left at shutdown are
  ``lost_records``; records TCP had not acknowledged when ``flush_timeout_s`` ran out are
  ``lost_in_flight``), and the collector decoded at least ``acked_records`` and at most
  ``acked_records + lost_in_flight``; for UDP to a closed port the ICMP errors are counted
  (``cberr``) while a mirrored live collector still gets every record;
* after a collector comes back the agent reconnects by itself and delivers the spool.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from netflow_agent.testing import build_agent
from tests.support.collectors import UdpSink, free_udp_port, netflow_decode
from tests.support.pcapgen import FlowSpec, PcapBuilder

FLOWS = 3000
REPLAY_LIMIT_S = 30.0


def make_capture(path: Path, flows: int, spacing_ns: int) -> Path:
    """One-packet UDP flows, ``spacing_ns`` apart in capture time."""
    builder = PcapBuilder()
    for i in range(flows):
        builder.add(FlowSpec("udp", f"10.1.{i // 250}.{i % 250 + 1}", "10.2.0.1", 1024 + i, 53,
                             packets=1, payload=20, start_ns=builder.start_ns + i * spacing_ns))
    builder.write(path)
    return path


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_capture(tmp_path_factory.mktemp("cap") / "flows.pcap", FLOWS, 10_000_000)


def replay(capture: Path, exports: str, tmp_path: Path, speed: str = "max",
           flows: int = FLOWS) -> tuple[dict[str, Any], float, float]:
    """Run the agent on the capture; return (stats after shutdown, replay s, shutdown s)."""
    agent = build_agent(f"""
[agent]
control_socket = ""
[cache]
inactive_timeout = 1
[[ingest.pcap]]
path = "{capture}"
speed = "{speed}"
{exports}
""", tmp_path)
    pipeline = agent.pipeline
    runner = threading.Thread(target=pipeline.run, daemon=True)
    started = time.monotonic()
    runner.start()
    runner.join(REPLAY_LIMIT_S)
    replay_s = time.monotonic() - started
    assert not runner.is_alive(), f"replay blocked for more than {REPLAY_LIMIT_S} s"
    started = time.monotonic()
    pipeline.shutdown()
    shutdown_s = time.monotonic() - started
    stats = pipeline.collect_stats()
    assert not pipeline.hook_errors, dict(pipeline.hook_errors)
    assert stats["core"]["exported_flows_total"] == flows
    return stats, replay_s, shutdown_s


# --- an IPFIX-over-TCP collector ---------------------------------------------------------------


class TcpCollector:
    """Accepts IPFIX over TCP; reads ``rate`` bytes/s (0 = never reads) and counts data records."""

    def __init__(self, rate: int, port: int = 0, rcvbuf: int = 0):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.rate = rate
        self.stream = bytearray()
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conns.append(conn)
            if self.rate:
                threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        chunk = max(1, self.rate // 20)
        conn.settimeout(0.2)
        while True:
            try:
                data = conn.recv(chunk)
            except TimeoutError:
                if self._stop.is_set():
                    return
                continue
            except OSError:
                return
            if not data:
                return
            self.stream += data
            if not self._stop.is_set():
                time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.listener.close()
        time.sleep(0.3)  # readers drain to EOF (the agent closed its side)
        for conn in self.conns:
            conn.close()

    def records(self) -> int:
        """Flow data records in the received stream (options records not counted)."""
        return ipfix_flow_records(bytes(self.stream))


def ipfix_flow_records(stream: bytes) -> int:
    """Count data records of (non-options) templates in a stream of IPFIX messages."""
    lengths: dict[int, int] = {}
    count = off = 0
    while off + 16 <= len(stream):
        version, mlen = struct.unpack_from("!HH", stream, off)
        assert version == 10 and mlen >= 16, (off, version, mlen)
        end, pos = off + mlen, off + 16
        while pos + 4 <= end:
            set_id, slen = struct.unpack_from("!HH", stream, pos)
            body, send = pos + 4, pos + slen
            if set_id == 2:
                while body + 4 <= send:
                    tid, nfields = struct.unpack_from("!HH", stream, body)
                    body += 4
                    size = 0
                    for _ in range(nfields):
                        ie, flen = struct.unpack_from("!HH", stream, body)
                        body += 8 if ie & 0x8000 else 4
                        size += flen
                    if nfields:
                        lengths[tid] = size
            elif set_id >= 256 and set_id in lengths:
                count += (slen - 4) // lengths[set_id]
            pos = send
        off = end
    return count


def _tcp_totals(stats: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    exporter = stats[name]
    (dest,) = exporter["destinations"].values()
    return exporter, dest


def _assert_tcp_accounting(exporter: dict[str, Any], dest: dict[str, Any],
                           flows: int = FLOWS) -> None:
    accounted = dest["acked_records"] + dest["lost_in_flight"] + exporter["lost_records"]
    assert exporter["flows_in"] == flows
    assert accounted == flows, {"exporter": exporter, "destination": dest}


# --- the faults ----------------------------------------------------------------------------------


def test_udp_collectors_refusing_are_counted_and_a_mirror_gets_everything(capture, tmp_path):
    """NetFlow v9 and IPFIX/UDP to closed ports (ICMP port unreachable) plus a live mirror."""
    closed_v9, closed_ipfix = free_udp_port(), free_udp_port()
    with UdpSink() as mirror:
        stats, replay_s, shutdown_s = replay(capture, f"""
[[export.netflow]]
destination = ["127.0.0.1:{closed_v9}", "127.0.0.1:{mirror.port}"]
protocol = 9
[[export.ipfix]]
destination = ["127.0.0.1:{closed_ipfix}"]
options_interval_s = 0
""", tmp_path)
        time.sleep(0.3)
        _, flows = netflow_decode(mirror.payloads())
    v9 = stats["export.netflow[0]"]
    print({"replay_s": round(replay_s, 2), "shutdown_s": round(shutdown_s, 2),
           "v9_cberr": v9["sock_cberr"], "v9_fail": v9["sock_fail"],
           "ipfix": {k: v for k, v in stats["export.ipfix[0]"].items() if "udp" in k}})
    assert v9["sock0"]["cberr"] > 0 or v9["sock0"]["fail"] > 0, v9["sock0"]
    assert v9["sock1"]["cberr"] == 0 and v9["sock1"]["fail"] == 0
    assert len(flows) == FLOWS  # the live destination lost nothing
    assert sum(f["IN_PKTS"] for f in flows) == FLOWS
    ipfix_dest = next(iter(stats["export.ipfix[0]"]["destinations"].values()))
    assert ipfix_dest.get("cberr", 0) + ipfix_dest.get("fail", 0) > 0, ipfix_dest
    assert shutdown_s < 5


def test_tcp_collector_that_never_reads(capture, tmp_path):
    """Accepts the connection, never reads: the socket fills, the spool bound refuses, all
    counted; the replay is not slowed down and the shutdown waits only ``flush_timeout_s``."""
    collector = TcpCollector(rate=0, rcvbuf=4096)
    try:
        stats, replay_s, shutdown_s = replay(capture, f"""
[[export.ipfix]]
destination = ["127.0.0.1:{collector.port}"]
transport = "tcp"
sndbuf = 4096
spool_memory_records = 500
spool_max_records = 500
flush_timeout_s = 1
options_interval_s = 0
""", tmp_path)
    finally:
        collector.close()
    exporter, dest = _tcp_totals(stats, "export.ipfix[0]")
    print({"replay_s": round(replay_s, 2), "shutdown_s": round(shutdown_s, 2), **dest,
           "lost_records": exporter["lost_records"]})
    # the kernel took some, the spool bound refused the rest or they were never acknowledged
    assert dest["lost_in_flight"] + exporter["lost_records"] > 0
    _assert_tcp_accounting(exporter, dest)
    assert shutdown_s < 4


def test_slow_tcp_collector(capture, tmp_path):
    """Reads 40 kB/s: the spool absorbs the backlog; everything delivered or counted."""
    collector = TcpCollector(rate=40_000)
    try:
        stats, replay_s, shutdown_s = replay(capture, f"""
[[export.ipfix]]
destination = ["127.0.0.1:{collector.port}"]
transport = "tcp"
sndbuf = 8192
flush_timeout_s = 2
options_interval_s = 0
""", tmp_path)
    finally:
        collector.close()
    exporter, dest = _tcp_totals(stats, "export.ipfix[0]")
    received = collector.records()
    print({"replay_s": round(replay_s, 2), "shutdown_s": round(shutdown_s, 2),
           "received": received, **dest, "lost_records": exporter["lost_records"]})
    _assert_tcp_accounting(exporter, dest)
    # records unacknowledged when flush_timeout_s ran out are counted lost; the kernel may
    # still deliver them after the close, so the collector gets at least what was acked
    assert dest["acked_records"] <= received <= dest["acked_records"] + dest["lost_in_flight"]
    assert received > 0
    assert shutdown_s < 6


def test_tcp_collector_comes_back(tmp_path):
    """Down at start (connection refused), up during the replay: reconnects by itself and
    delivers what was spooled meanwhile; nothing lost, nothing duplicated. The capture is
    replayed at its recorded speed (600 flows over 3 s) so the collector returns mid-way."""
    flows = 600
    capture = make_capture(tmp_path / "slow.pcap", flows, 5_000_000)
    port = free_udp_port()  # any free number; nothing listens on TCP there yet
    holder: dict[str, TcpCollector] = {}

    def come_back() -> None:
        time.sleep(0.5)
        holder["c"] = TcpCollector(rate=10_000_000, port=port)

    threading.Thread(target=come_back, daemon=True).start()
    try:
        stats, replay_s, shutdown_s = replay(capture, f"""
[[export.ipfix]]
destination = ["127.0.0.1:{port}"]
transport = "tcp"
reconnect_interval_s = 0.2
reconnect_max_interval_s = 0.2
flush_timeout_s = 5
options_interval_s = 0
""", tmp_path, speed="recorded", flows=flows)
    finally:
        time.sleep(0.6)
        if "c" in holder:
            holder["c"].close()
    exporter, dest = _tcp_totals(stats, "export.ipfix[0]")
    received = holder["c"].records()
    print({"replay_s": round(replay_s, 2), "received": received, **dest})
    assert dest["connect_failures"] >= 1 and dest["connects"] >= 1
    _assert_tcp_accounting(exporter, dest, flows)
    assert exporter["lost_records"] == 0 and dest["lost_in_flight"] == 0
    assert received == dest["acked_records"] == flows
