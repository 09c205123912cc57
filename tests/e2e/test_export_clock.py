"""One export clock: a pcap replay to NetFlow v5, v9 and IPFIX, every packet checked on the wire.

Issue 18 items 1 and 2. The capture has flows that start and end at every fraction of a
second and expire while the replay runs (``inactive_timeout = 1``), so export packets are
stamped at many capture times. On every datagram of every exporter: no record time after the
header's time (:mod:`tests.support.exportclock`); and the IPFIX Export Time is the capture's
clock, as the NetFlow v9 header's is (docs/architecture.md "Clock"), never the wall clock.
"""

from __future__ import annotations

import struct
from pathlib import Path

from tests.export_netflow.collect import UdpSink
from tests.support.agentproc import run_agent
from tests.support.exportclock import assert_export_clock
from tests.support.pcapgen import SAMPLE_EPOCH_NS, FlowSpec, PcapBuilder

S = 1_000_000_000
FLOWS = 60


def _capture(path: Path) -> tuple[int, int]:
    """60 UDP flows, one starting every 137 ms, 3 packets 211 ms apart: sub-second ends."""
    builder = PcapBuilder()
    for i in range(FLOWS):
        builder.add(FlowSpec("udp", "10.9.0.1", f"10.9.1.{i + 1}", 3000 + i, 53, packets=3,
                             payload=10 + i, start_ns=SAMPLE_EPOCH_NS + i * 137_000_000,
                             gap_ns=211_000_000))
    builder.write(path)
    return SAMPLE_EPOCH_NS, SAMPLE_EPOCH_NS + (FLOWS - 1) * 137_000_000 + 2 * 211_000_000


def _replay(tmp_path: Path, sinks: dict[str, UdpSink]) -> tuple[int, int]:
    first, last = _capture(tmp_path / "clock.pcap")
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'[agent]\nscan_interval_ms = 100\ncontrol_socket = "{tmp_path / "agent.sock"}"\n\n'
        f'[cache]\ninactive_timeout = 1\n\n'
        f'[[ingest.pcap]]\npath = "{tmp_path / "clock.pcap"}"\n\n'
        f'[[export.netflow]]\nprotocol = 5\ndestination = ["{sinks["v5"].endpoint}"]\n\n'
        f'[[export.netflow]]\nprotocol = 9\ndestination = ["{sinks["v9"].endpoint}"]\n\n'
        f'[[export.ipfix]]\ndestination = ["{sinks["ipfix"].endpoint}"]\n')
    result = run_agent("-c", str(conf))
    assert result.returncode == 0, result.stderr
    return first, last


def test_replay_records_never_after_their_packet_header(tmp_path):
    sinks = {name: UdpSink() for name in ("v5", "v9", "ipfix")}
    try:
        _replay(tmp_path, sinks)
        streams = {name: sink.drain() for name, sink in sinks.items()}
    finally:
        for sink in sinks.values():
            sink.close()
    for name, datagrams in streams.items():
        assert len(datagrams) > 3, name  # exported throughout the replay, not once at the end
        report = assert_export_clock(datagrams, min_records=FLOWS)
        assert report.records >= FLOWS, name


def _export_seconds(datagrams: list[bytes], offset: int) -> list[int]:
    return [struct.unpack_from("!I", d, offset)[0] for d in datagrams]


def test_replay_ipfix_and_v9_share_the_capture_clock(tmp_path):
    sinks = {name: UdpSink() for name in ("v5", "v9", "ipfix")}
    try:
        first, last = _replay(tmp_path, sinks)
        v9 = _export_seconds(sinks["v9"].drain(), 8)  # v9 unix_secs
        ipfix = _export_seconds(sinks["ipfix"].drain(), 4)  # IPFIX Export Time
    finally:
        for sink in sinks.values():
            sink.close()
    window = range(first // S, -(-last // S) + 1)  # the capture's seconds, rounded outwards
    assert all(t in window for t in v9), (v9, window)
    assert all(t in window for t in ipfix), (ipfix, window)
    assert max(ipfix) == max(v9)  # the final flush: the same clock, the same second
