"""The workload shared by the export benchmarks: records, their batches, a sink that never reads.

``bench/export/bench_netflow.py`` and ``bench/export_ipfix/bench_ipfix.py`` import it so that
NetFlow and IPFIX figures are measured on the same records, handed over in the same batches, to
the same kind of receiver.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from netflow_agent.model import FlowRecord

BATCH = 4096  # records per agent_export_flows call, as the cache expires them


def make_records(n: int, now_ns: int, end_reason: int = 0) -> list[FlowRecord]:
    """``n`` distinct flows, 10 % IPv6, a third UDP, with plausible counters and times.

    :param now_ns: wall-clock ns the flow times are relative to.
    :param end_reason: the records' ``end_reason`` (``agent.model.END_*``).
    """
    out = []
    v6s, v6d = ipaddress.ip_address("fd00::1").packed, ipaddress.ip_address("fd00::2").packed
    for i in range(n):
        if i % 10 == 9:
            src, dst, ver = v6s, v6d, 6
        else:
            src, dst, ver = (0x0A000000 + i).to_bytes(4, "big"), b"\xc0\x00\x02\x01", 4
        out.append(FlowRecord(ver, 6 if i % 3 else 17, src, dst, 1024 + i % 60000, 443,
                              in_if=2, out_if=3, packets=10 + i % 50,
                              octets=1500 * (10 + i % 50), start_ns=now_ns - 20_000_000_000,
                              end_ns=now_ns - 1_000_000_000, tcp_flags=0x1B,
                              end_reason=end_reason))
    return out


def batches(records: list[FlowRecord], size: int = BATCH) -> list[list[FlowRecord]]:
    """``records`` cut into consecutive lists of at most ``size``."""
    return [records[i : i + size] for i in range(0, len(records), size)]


@contextmanager
def discard_sink() -> Iterator[str]:
    """A bound UDP socket on 127.0.0.1 that never reads; yields its ``"host:port"``.

    The receiver drops what overflows its buffer; the sender still pays the full syscall and
    loopback path.
    """
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sink.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sink.getsockname()[1]}"
    finally:
        sink.close()
