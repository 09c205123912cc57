"""NFLOG userspace cost per packet at ISP scale, offline: ``python3 bench/nflog/scale_bench.py``.

Builds kernel-shaped NFLOG datagrams (64 messages each, as the rule's ``queue-threshold 64``
sends them; the attributes the kernel puts in a prerouting message) for bench/compare's
W1 and W2 shapes: ``--concurrent`` flows (IPv4/IPv6 UDP) sending round robin, so each
datagram holds 64 different flows. Then times what the reader thread and the pipeline do
with them, without the socket: feed every datagram into the C aggregator, take every
``--window`` datagrams (one batch per 5 ms at ~600 kpps is 47 datagrams, the old reader;
``batch_ms`` holds the sums longer), and merge each batch into the flow cache
(``agent_cache_flows``). Reports µs per packet, rows per packet and the cache merge's share
of the time, medians of ``--runs``.
An argument ``--module PATH`` times another build of ``_nflog`` (an older revision's) as
the reader takes from it: bounded native rows where the build has them, else its own
``take()``.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from netflow_agent import heap  # noqa: E402
from netflow_agent.plugins.ingest_nflog import decoders  # noqa: E402
from netflow_agent.plugins.ingest_nflog.component import _HOLD_FLOWS  # noqa: E402
from netflow_agent.stages.cache import CacheConfig, FlowCache  # noqa: E402

heap.pin()  # the agent's fixed M_MMAP_THRESHOLD: a batch's rows are their own mmap

PER_DATAGRAM = 64
TS = (1_700_000_000, 0)


def _attr(atype: int, value: bytes) -> bytes:
    alen = 4 + len(value)
    return struct.pack("=HH", alen, atype) + value + b"\0" * (-alen % 4)


def _message(payload: bytes, seq: int, usec: int) -> bytes:
    """A prerouting message as nfnetlink_log builds it (HWADDR, HWTYPE/LEN/HEADER too)."""
    attrs = [_attr(1, struct.pack(">HBx", 0x0800, 0)), _attr(4, struct.pack(">I", 2)),
             _attr(8, struct.pack(">H2x8s", 6, b"\x02" * 6)), _attr(15, struct.pack(">H", 1)),
             _attr(17, struct.pack(">H", 14)), _attr(16, b"\x02" * 14),
             _attr(3, struct.pack(">QQ", TS[0], usec)), _attr(12, struct.pack(">I", seq)),
             _attr(9, payload)]
    body = struct.pack("=BB2s", socket.AF_UNSPEC, 0, b"\0\x07") + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), 0x400, 0, 0, 0) + body


def _payload(flow: int) -> bytes:
    sport, dport = 1024 + flow % 50000, 53 + flow % 8
    udp = struct.pack("!HHHH", sport, dport, 26, 0) + b"\0" * 18
    if flow % 2:
        return struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64,
                           b"\xfd" + flow.to_bytes(15, "big"), b"\xfd" + b"\0" * 15) + udp
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                       (0x0A800000 + flow).to_bytes(4, "big"), b"\x0a\xc8\0\1") + udp


def datagrams(concurrent: int, packets: int) -> list[bytearray]:
    """``packets`` packets of ``concurrent`` flows in turn, 64 messages per datagram."""
    payloads = [_payload(f) for f in range(concurrent)]
    done = struct.pack("=IHHII", 20, 3, 2, 0, 0) + b"\0" * 4
    out = []
    for start in range(0, packets, PER_DATAGRAM):
        msgs = [_message(payloads[i % concurrent], i, i // 1000 % 1_000_000)
                for i in range(start, min(packets, start + PER_DATAGRAM))]
        out.append(bytearray(b"".join(msgs) + done))
    return out


def aggregator(module: object, hold: int) -> object:
    """Another build's ``Aggregator`` with ``hold`` (append mode decides on its cycles) and
    native rows (as the reader builds it: appended rows written as the batch's rows); an
    older build without the ``native`` or ``hold`` argument gets its default."""
    for kwargs in ({"hold": hold, "native": True}, {"hold": hold}, {}):
        try:
            return module.Aggregator(**kwargs)  # type: ignore[attr-defined]
        except TypeError:
            continue
    raise TypeError("no Aggregator signature fits")


def _takes_native(agg: object) -> bool:
    """Whether a build's ``take()`` has the bounded native rows (since the columnar batch)."""
    return "native" in (agg.take.__doc__ or "")  # type: ignore[attr-defined]


def run(bufs: list[bytearray], window: int, module: object | None,
        hold: int = _HOLD_FLOWS) -> tuple[float, float, float]:
    """µs per packet, rows per packet and the cache's share of the µs (``agent_cache_flows``,
    the pipeline thread's part), datagrams -> aggregator -> cache; the sums also go on once
    ``hold`` rows are pending (the reader's ``_HOLD_FLOWS``)."""
    cache = FlowCache(CacheConfig())
    if module is None:
        batcher = decoders.CBatcher(hold=hold)  # append mode decides on cycles of the hold
        take = batcher.take
    else:
        agg = aggregator(module, hold)
        native = _takes_native(agg)

        def take(source: str) -> decoders.FlowBatch | None:
            """As CBatcher.take: bounded native rows; a build before them: take() all."""
            if native:
                records, _p, trunc, frag, tb, gaps = agg.take(decoders.TAKE_LIMIT, native=True)
                flows = np.frombuffer(records, decoders.NATIVE_DTYPE)
            else:
                records, _p, trunc, frag, tb, gaps = agg.take()
                flows = decoders.flows_of(bytes(records))
            if not (len(flows) or trunc or frag or gaps):
                return None
            return decoders.FlowBatch(source, flows, dropped_packets=gaps + trunc,
                                      dropped_bytes=tb)
    feed = batcher.feed if module is None else agg.feed
    rows = packets = 0
    merge = 0.0
    t = time.perf_counter()
    for i, b in enumerate(bufs, 1):
        packets += feed(b, len(b), 0)
        pending = batcher.pending if module is None else agg.pending
        if i % window and i != len(bufs) and pending < hold:
            continue
        while True:
            batch = take("ingest.nflog[0]")
            if batch is not None:
                rows += len(batch)
                m = time.perf_counter()
                cache.agent_cache_flows(batch, 0)
                merge += time.perf_counter() - m
            if not (batcher.pending if module is None else agg.pending):
                break
    elapsed = time.perf_counter() - t
    assert cache.stats.traffic_packets == packets, (cache.stats.traffic_packets, packets)
    return elapsed / packets * 1e6, rows / packets, merge / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrent", type=int, nargs="+", default=[4000, 100000])
    ap.add_argument("--packets", type=int, default=400_000)
    ap.add_argument("--window", type=int, nargs="+", default=[47, 470])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--hold", type=int, nargs="+", default=[_HOLD_FLOWS],
                    help="also take once this many rows are pending (and append mode's "
                    "packet threshold; default the reader's)")
    ap.add_argument("--module", help="path of another _nflog build to time")
    args = ap.parse_args()
    module = None
    if args.module:
        spec = importlib.util.spec_from_file_location("_nflog", args.module)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    np.random.seed(0)
    for concurrent in args.concurrent:
        bufs = datagrams(concurrent, args.packets)
        for window in args.window:
            for hold in args.hold:
                res = [run(bufs, window, module, hold) for _ in range(args.runs)]
                us = statistics.median(r[0] for r in res)
                share = statistics.median(r[2] for r in res)
                print(f"concurrent {concurrent:>7}  take every {window:>4} datagrams or "
                      f"{min(hold, 99_999_999):>8} rows: {us:.3f} us/packet, "
                      f"{res[0][1]:.3f} rows/packet, cache merge {share:.0%}", flush=True)


if __name__ == "__main__":
    main()
