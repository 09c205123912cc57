#!/usr/bin/env python3
"""Regenerate ``examples/sample.pcap``: a small, reproducible capture with known flows.

Usage: ``python3 scripts/make_sample_pcap.py [PATH]`` (default ``examples/sample.pcap``).
Prints the ground truth (flow, packets, IP bytes) that the agent must report for it. The file
is built by ``tests/support/pcapgen.py`` with a fixed clock, so the output is byte-identical
on every run (``tests/support_tests/test_pcapgen.py`` checks the committed copy).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.pcapgen import (  # noqa: E402
    SAMPLE_EPOCH_NS,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_SYN,
    FlowSpec,
    PcapBuilder,
)
from tests.support.truth import GroundTruth  # noqa: E402

MS = 1_000_000


def sample_builder() -> PcapBuilder:
    """The sample's flows: an IPv4 and an IPv6 TCP conversation, UDP both ways, pings."""
    b = PcapBuilder(start_ns=SAMPLE_EPOCH_NS)
    t = SAMPLE_EPOCH_NS
    client_flags = (TCP_SYN, TCP_ACK, TCP_PSH | TCP_ACK, TCP_ACK, TCP_FIN | TCP_ACK, TCP_ACK)
    server_flags = (TCP_SYN | TCP_ACK, TCP_PSH | TCP_ACK, TCP_PSH | TCP_ACK, TCP_FIN | TCP_ACK)
    b.add(
        FlowSpec(
            "tcp",
            "192.0.2.10",
            "198.51.100.80",
            51000,
            80,
            packets=6,
            payload=0,
            tcp_flags=client_flags,
            start_ns=t,
            gap_ns=20 * MS,
        )
    )
    b.add(
        FlowSpec(
            "tcp",
            "198.51.100.80",
            "192.0.2.10",
            80,
            51000,
            packets=4,
            payload=512,
            tcp_flags=server_flags,
            start_ns=t + 10 * MS,
            gap_ns=25 * MS,
        )
    )
    b.add(
        FlowSpec(
            "udp",
            "192.0.2.10",
            "203.0.113.9",
            40000,
            9000,
            packets=5,
            payload=120,
            start_ns=t + 200 * MS,
            gap_ns=100 * MS,
        )
    )
    b.add(
        FlowSpec(
            "udp",
            "203.0.113.9",
            "192.0.2.10",
            9000,
            40000,
            packets=5,
            payload=60,
            start_ns=t + 250 * MS,
            gap_ns=100 * MS,
        )
    )
    b.add(
        FlowSpec(
            "icmp",
            "192.0.2.10",
            "198.51.100.1",
            packets=3,
            payload=56,
            icmp_type=8,
            start_ns=t + 1000 * MS,
            gap_ns=1000 * MS,
        )
    )
    b.add(
        FlowSpec(
            "icmp",
            "198.51.100.1",
            "192.0.2.10",
            packets=3,
            payload=56,
            icmp_type=0,
            start_ns=t + 1001 * MS,
            gap_ns=1000 * MS,
        )
    )
    b.add(
        FlowSpec(
            "tcp",
            "2001:db8::10",
            "2001:db8:1::443",
            52000,
            443,
            packets=5,
            payload=200,
            start_ns=t + 500 * MS,
            gap_ns=30 * MS,
        )
    )
    b.add(
        FlowSpec(
            "tcp",
            "2001:db8:1::443",
            "2001:db8::10",
            443,
            52000,
            packets=4,
            payload=700,
            tcp_flags=TCP_PSH | TCP_ACK,
            start_ns=t + 515 * MS,
            gap_ns=30 * MS,
        )
    )
    b.add(
        FlowSpec(
            "icmpv6",
            "2001:db8::10",
            "2001:db8:1::1",
            packets=2,
            payload=32,
            icmp_type=128,
            start_ns=t + 1500 * MS,
            gap_ns=1000 * MS,
        )
    )
    b.add(
        FlowSpec(
            "icmpv6",
            "2001:db8:1::1",
            "2001:db8::10",
            packets=2,
            payload=32,
            icmp_type=129,
            start_ns=t + 1501 * MS,
            gap_ns=1000 * MS,
        )
    )
    return b


def describe(truth: GroundTruth) -> str:
    """One line per flow plus the totals."""
    lines = [f"{'proto':>5} {'source':>22} {'destination':>22} {'packets':>7} {'bytes':>6}"]
    for f, c in sorted(truth.flows.items()):
        src, dst = f"{f.src}:{f.sport}", f"{f.dst}:{f.dport}"
        lines.append(f"{f.proto:>5} {src:>22} {dst:>22} {c.packets:>7} {c.bytes:>6}")
    lines.append(f"{len(truth.flows)} flows, {truth.packets} packets, {truth.bytes} bytes")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else ROOT / "examples" / "sample.pcap"
    truth = sample_builder().write(path)
    print(f"wrote {path}")
    print(describe(truth))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
