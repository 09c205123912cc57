"""bench/ebpf/drain.py: cost of one drain (C batch lookup-and-delete + Python decode) vs flows.

Fills the kernel flow table with N distinct flows (one raw UDP frame per flow from
``flowgen.c`` through a veth in fresh namespaces), then drains it as the ingest does, chunk by
chunk (``--chunk`` rows): times ``Loader.drain_next()`` (the C part:
``BPF_MAP_LOOKUP_AND_DELETE_BATCH`` and the per-CPU sum, plus the scan of the mmapped
per-CPU slots, GIL released, into a reused buffer) and ``decode_rows()`` (NumPy: the FlowBatch
columns), in CPU time of the draining thread (user + kernel: robust to other load on the
machine). Medians of ``--runs``; the last column is the process's peak RSS growth over the
whole bench (``VmHWM`` after minus before the first drain).

Run as root: ``python3 bench/ebpf/drain.py [--runs 5] [--flows 10000 100000] [--maxflows N]
[--prealloc] [--chunk 4096] [--map-type shared]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from netflow_agent.netns import NetnsScope  # noqa: E402
from netflow_agent.plugins.ingest_ebpf._loader import Loader  # noqa: E402
from netflow_agent.plugins.ingest_ebpf.attach import Attacher  # noqa: E402
from netflow_agent.plugins.ingest_ebpf.decode import (  # noqa: E402
    RECORD_DTYPE,
    decode_rows,
    monotonic_to_wall_offset,
)
from tests.support.flowgen import Flood, build  # noqa: E402
from tests.support.netns import Netns, veth_pair  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--flows", type=int, nargs="*", default=[1000, 10000, 100000, 200000])
    ap.add_argument("--maxflows", type=int, default=1 << 20, help="kernel table size")
    ap.add_argument("--prealloc", action="store_true", help="preallocated tables")
    ap.add_argument("--slots", type=int, default=4096,
                    help="per-CPU flow slots (the agent's cpu_slots; 0 = hash only)")
    ap.add_argument("--chunk", type=int, default=4096,
                    help="rows per drain step (the agent's drain_chunk)")
    ap.add_argument("--map-type", choices=("shared", "percpu"), default="shared",
                    help="kernel hash type (the agent's map_type)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Netns() as a, Netns() as b:
        flowgen = build(Path(tmp))
        pair = veth_pair(a, b)
        b.run(["iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "-j", "DROP"])
        loader = Loader(maxflows=args.maxflows, slots=args.slots, prealloc=args.prealloc,
                        chunk_rows=args.chunk, percpu=args.map_type == "percpu")
        chunk = np.empty(args.chunk, RECORD_DTYPE)
        loader.set_active(0)
        attacher = Attacher(loader, "tcx", "ingress")
        with NetnsScope(b.name):
            attacher.attach(pair.b.ifindex, pair.b.ifname)
        print(f"maxflows {args.maxflows}, {args.map_type} map, prealloc {args.prealloc}, "
              f"slots {args.slots}, chunk {args.chunk}")
        print("| flows | C drain ms | decode ms | total µs/flow | peak RSS growth MB |")
        print("|---|---|---|---|---|")
        hwm0 = vm_hwm_kb()
        for n in args.flows:
            c_ms, py_ms = [], []
            for _ in range(args.runs):
                Flood(n, 1, n).send(flowgen, pair.a, pair.b.mac, pair.b.addr)
                c_s, py_s, got = drain(loader, chunk)
                assert got == n, (got, n)
                c_ms.append(c_s * 1e3)
                py_ms.append(py_s * 1e3)
            c, p = statistics.median(c_ms), statistics.median(py_ms)
            print(f"| {n} | {c:.2f} | {p:.2f} | {(c + p) * 1e3 / n:.2f} | "
                  f"{(vm_hwm_kb() - hwm0) / 1024:.1f} |")
        with NetnsScope(b.name):
            attacher.detach_all()
        loader.close()


def drain(loader: Loader, chunk: np.ndarray) -> tuple[float, float, int]:
    """Drain table 0 chunk by chunk: seconds in C, seconds decoding, flows."""
    c_s = py_s = 0.0
    got, more = 0, True
    loader.drain_begin(0)
    offset = monotonic_to_wall_offset()
    while more:
        t0 = time.thread_time()
        rows, err, more = loader.drain_next(chunk)
        t1 = time.thread_time()
        got += len(decode_rows(chunk[:rows], offset))
        c_s, py_s = c_s + t1 - t0, py_s + time.thread_time() - t1
        assert not err, err
    return c_s, py_s, got


def vm_hwm_kb() -> int:
    """This process's peak resident set (KiB)."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmHWM:"))


if __name__ == "__main__":
    main()
