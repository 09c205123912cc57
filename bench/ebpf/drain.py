"""bench/ebpf/drain.py: cost of one drain (C batch lookup-and-delete + Python decode) vs flows.

Fills the kernel flow table with N distinct flows (one raw UDP frame per flow from
``flowgen.c`` through a veth in fresh namespaces), then times ``Loader.drain()`` (the C part:
``BPF_MAP_LOOKUP_AND_DELETE_BATCH`` and the per-CPU sum, plus the scan of the mmapped
per-CPU slots, GIL released) and ``decode_records()`` (Python: agent keys and FlowDelta
objects). Medians of ``--runs``.

Run as root: ``python3 bench/ebpf/drain.py [--runs 5] [--flows 10000 100000] [--maxflows N]
[--prealloc]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from netflow_agent.netns import NetnsScope  # noqa: E402
from netflow_agent.plugins.ingest_ebpf._loader import Loader  # noqa: E402
from netflow_agent.plugins.ingest_ebpf.attach import Attacher  # noqa: E402
from netflow_agent.plugins.ingest_ebpf.decode import decode_records, monotonic_to_wall_offset  # noqa: E402
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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Netns() as a, Netns() as b:
        flowgen = build(Path(tmp))
        pair = veth_pair(a, b)
        b.run(["iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "-j", "DROP"])
        loader = Loader(maxflows=args.maxflows, slots=args.slots, prealloc=args.prealloc)
        loader.set_active(0)
        attacher = Attacher(loader, "tcx", "ingress")
        with NetnsScope(b.name):
            attacher.attach(pair.b.ifindex, pair.b.ifname)
        print(f"maxflows {args.maxflows}, prealloc {args.prealloc}, slots {args.slots}")
        print("| flows | C drain ms | decode ms | total µs/flow |")
        print("|---|---|---|---|")
        for n in args.flows:
            c_ms, py_ms = [], []
            for _ in range(args.runs):
                Flood(n, 1, n).send(flowgen, pair.a, pair.b.mac, pair.b.addr)
                t0 = time.perf_counter()
                data, err = loader.drain(0)
                t1 = time.perf_counter()
                flows = decode_records(data, monotonic_to_wall_offset())
                t2 = time.perf_counter()
                assert not err and len(flows) == n, (err, len(flows), n)
                c_ms.append((t1 - t0) * 1e3)
                py_ms.append((t2 - t1) * 1e3)
            c, p = statistics.median(c_ms), statistics.median(py_ms)
            print(f"| {n} | {c:.2f} | {p:.2f} | {(c + p) * 1e3 / n:.2f} |")
        with NetnsScope(b.name):
            attacher.detach_all()
        loader.close()


if __name__ == "__main__":
    main()
