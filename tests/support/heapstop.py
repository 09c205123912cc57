"""A stop's forced scan in a process of its own, for ``tests/unit/test_heap.py``.

``python -m tests.support.heapstop stop|scan reuse|plain FLOWS`` pins glibc's heap as the agent
does (:func:`agent.heap.pin`), fills a v9 exporter's pipeline with ``FLOWS`` varied flows
(IPv4 and IPv6, TCP/UDP/ICMP, several interfaces, ToS, flags and counters), runs
``Pipeline.shutdown()`` to a UDP sink on loopback and prints one JSON line: the sha256 over
every datagram in order, their count, the records exported and lost, and the reuse windows
opened (their ``release``). ``scan`` exports the flows in a timed scan first (all idle).
``plain`` turns the scans' heap reuse (:func:`agent.heap.reuse_parts`) off. The clock is
frozen, so two runs export the same bytes unless the heap's reused blocks leak into a
datagram.

``python -m tests.support.heapstop mallinfo`` prints whether a 1 MiB array was its own
mapping inside :func:`agent.heap.reuse_parts` before pinning (the window then does nothing),
after pinning, inside the window, after it and after a window left by an exception.

A process of its own because ``mallopt`` settings last for the whole process.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FIXED_NS = 1_700_000_000_123_456_789


def _frozen_clock() -> None:
    time.time_ns = lambda: FIXED_NS  # header times, uptime and flow times: the same each run
    time.time = lambda: FIXED_NS / 1e9


def flows(n: int, now_ns: int):
    """``n`` distinct flows whose columns differ row by row (a leak shows in the bytes)."""
    from netflow_agent.model import FlowBatch, FlowRecord

    rng = np.random.default_rng(7)
    v6 = int(ipaddress.ip_address("fd00::"))
    out = []
    for i in range(n):
        proto = (6, 17, 1)[i % 3]
        if i % 7 == 3:
            ver, src, dst = 6, (v6 + i).to_bytes(16, "big"), (v6 + 2 * i + 1).to_bytes(16, "big")
        else:
            ver, src, dst = 4, (0x0A000000 + i).to_bytes(4, "big"), (0xC0000200 + i % 251
                                                                        ).to_bytes(4, "big")
        out.append(FlowRecord(
            ver, proto, src, dst, 1024 + i % 60000 if proto != 1 else 0,
            (443, 53, 8 << 8)[i % 3], tos=int(rng.integers(0, 256)), in_if=1 + i % 5,
            out_if=2 + i % 3, packets=int(rng.integers(1, 1000)),
            octets=int(rng.integers(40, 1_500_000)),
            start_ns=now_ns - int(rng.integers(2, 60)) * 1_000_000_000,
            end_ns=now_ns - int(rng.integers(0, 2)) * 1_000_000_000,
            tcp_flags=int(rng.integers(0, 64)) & ~0x05 if proto == 6 else 0))
    return FlowBatch.from_records(out, "ingest.fake[0]")


def stop(mode: str, n: int, timed: bool = False) -> dict:
    """The forced scan of ``n`` flows to a sink (``timed``: a timed scan 20 s after them,
    where every flow is idle, then the stop); what reached it."""
    _frozen_clock()
    from netflow_agent import heap
    from netflow_agent.testing import fill_cache, v9_export_agent

    heap.pin()
    windows = []
    reuse = heap.reuse_parts

    def counted(release: bool = True):  # the stop opens the window once, without trim
        windows.append(release)
        return reuse(release) if mode == "reuse" else contextlib.nullcontext()

    heap.reuse_parts = counted  # type: ignore[assignment]
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    sink.bind(("127.0.0.1", 0))
    with tempfile.TemporaryDirectory() as tmp:
        agent = v9_export_agent(sink.getsockname()[1], Path(tmp), "rate_limit = 0\n")
        pipeline = agent.pipeline
        fill_cache(agent, flows(n, FIXED_NS), 16_384)
        if timed:
            pipeline.scan(FIXED_NS + 20_000_000_000)
        pipeline.shutdown()
        stats = pipeline.components["export.netflow[0]"].agent_collect_stats()
    digest, count = hashlib.sha256(), 0
    sink.settimeout(0.5)
    with contextlib.suppress(TimeoutError):
        while count < int(stats["sock_ok"]):
            digest.update(sink.recv(65535))
            count += 1
    return {"sha256": digest.hexdigest(), "datagrams": count, "sent": int(stats["sock_ok"]),
            "exported": pipeline.loop.exported_flows, "lost": int(stats.get("lost_records", 0)),
            "windows": windows}


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def mallinfo() -> dict:
    """Whether a 1 MiB array is a mapping of its own: pinned, inside the reuse, after it."""
    from netflow_agent import heap
    from netflow_agent.libc import libc

    info = libc().mallinfo2
    info.restype = _Mallinfo2

    def own_mapping() -> bool:
        before = info().hblks
        block = np.ones(1 << 20, np.uint8)  # noqa: F841 (alive while counted)
        return bool(info().hblks > before)

    out = {"unpinned_inside": _inside(heap, own_mapping)}
    heap.pin()
    out["pinned"] = own_mapping()
    out["inside"] = _inside(heap, own_mapping)
    out["after"] = own_mapping()
    try:
        with heap.reuse_parts():
            raise RuntimeError("an exporter failed in the window")
    except RuntimeError:
        out["after_failure"] = own_mapping()
    return out


def _inside(heap, own_mapping) -> bool:
    with heap.reuse_parts():
        return own_mapping()


if __name__ == "__main__":
    if sys.argv[1] == "mallinfo":
        print(json.dumps(mallinfo()))
    else:
        print(json.dumps(stop(sys.argv[2], int(sys.argv[3]), sys.argv[1] == "scan")))
