"""The workload shared by the export benchmarks: records, their batches, a sink that never reads.

``bench/export/bench_netflow.py`` and ``bench/export_ipfix/bench_ipfix.py`` import it so that
NetFlow and IPFIX figures are measured on the same records, handed over in the same batches, to
the same kind of receiver.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from netflow_agent import heap
from netflow_agent.libc import libc
from netflow_agent.model import FlowBatch, FlowRecord

#: whether exporters receive columnar FlowBatches; before 8788758 (e.g. 5b1e4b4) FlowBatch
#: only carried ingest deltas and exporters received lists of records
COLUMNAR = hasattr(FlowBatch, "from_records")

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


def handover(records: list[FlowRecord], size: int = BATCH) -> Callable[[], list[Any]]:
    """What ``agent_export_flows`` receives, made fresh for every timed run: ``FlowBatch``
    objects (new ones, so no run finds the records a previous run made) over columns built
    once, cut into ``size`` rows as the cache hands them over; lists of records in a version
    of the agent before ``FlowBatch``."""
    if not COLUMNAR:
        parts = batches(records, size)
        return lambda: parts
    flows = FlowBatch.from_records(records).flows
    return lambda: [FlowBatch("bench", flows[i : i + size]) for i in range(0, len(flows), size)]


def input_kind() -> str:
    """``FlowBatch`` or ``list[FlowRecord]``: what :func:`handover` hands over here."""
    return "FlowBatch" if COLUMNAR else "list[FlowRecord]"


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


#: flows per cache hand-over while filling (an eBPF drain step, ``drain_chunk``)
FILL_ROWS = 16_384


def stop_options(ap: argparse.ArgumentParser, runs: int) -> None:
    """The options every stop bench takes: --flows, --runs, --fin, --mmap-threshold."""
    ap.add_argument("--flows", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=runs)
    ap.add_argument("--fin", action="store_true",
                    help="keep the workload's FIN on TCP flows (they wait in the FIN set)")
    ap.add_argument("--mmap-threshold", type=int, default=128 * 1024,
                    help="glibc M_MMAP_THRESHOLD in bytes (the agent's, agent/heap.py)")
    ap.add_argument("--no-part-reuse", action="store_true",
                    help="keep the 128 KiB threshold during the forced scan too (the agent "
                    "raises it for the parts: agent.heap.reuse_parts), for A/B")


def stop_batch(flows: int, now_ns: int, fin: bool, source: str) -> FlowBatch:
    """:func:`make_records` as one batch; without ``fin`` the flows are still open at the
    stop (FIN and RST cleared): none waits in the cache's FIN set."""
    batch = FlowBatch.from_records(make_records(flows, now_ns), source)
    if not fin:
        batch.flows["tcp_flags"] &= ~np.uint8(0x05)
    return batch


def set_mmap_threshold(threshold: int, part_reuse: bool = True) -> None:
    """glibc's mmap threshold, as the agent sets it: the agent's own (``agent.heap.pin``,
    with the forced scan's heap reuse unless ``part_reuse`` is off) or another value."""
    if threshold == heap.MMAP_THRESHOLD and part_reuse:
        heap.pin()
    else:
        libc().mallopt(heap.M_MMAP_THRESHOLD, threshold)
