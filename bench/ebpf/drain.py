"""bench/ebpf/drain.py: cost of one drain (C batch lookup-and-delete + Python decode) vs flows.

Fills the kernel flow table with N distinct flows (one UDP packet per destination port from
``blast.c`` through a veth in fresh namespaces), then times ``Loader.drain()`` (the C part:
``BPF_MAP_LOOKUP_AND_DELETE_BATCH`` and the per-CPU sum, plus the scan of the mmapped
per-CPU slots, GIL released) and ``decode_records()`` (Python: agent keys and FlowDelta
objects). Medians of ``--runs``.

Run as root: ``python3 bench/ebpf/drain.py [--runs 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
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
from tests.support.netns import Netns, veth_pair  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--flows", type=int, nargs="*", default=[1000, 10000, 60000])
    ap.add_argument("--slots", type=int, default=4096,
                    help="per-CPU flow slots (the agent's cpu_slots; 0 = hash only)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Netns() as a, Netns() as b:
        blast = str(Path(tmp) / "blast")
        subprocess.run(["gcc", "-O2", "-o", blast, str(Path(__file__).with_name("blast.c"))],
                       check=True)
        pair = veth_pair(a, b)
        b.run(["iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "-j", "DROP"])
        loader = Loader(maxflows=65536, slots=args.slots)
        loader.set_active(0)
        attacher = Attacher(loader, "tcx", "ingress")
        with NetnsScope(b.name):
            attacher.attach(pair.b.ifindex, pair.b.ifname)
        print("| flows | C drain ms | decode ms | total µs/flow |")
        print("|---|---|---|---|")
        for n in args.flows:
            c_ms, py_ms = [], []
            for _ in range(args.runs):
                a.run([blast, pair.b.addr, "1024", str(n), "10", str(n), "18"])
                t0 = time.perf_counter()
                data = loader.drain(0)
                t1 = time.perf_counter()
                flows = decode_records(data, monotonic_to_wall_offset())
                t2 = time.perf_counter()
                assert len(flows) == n, (len(flows), n)
                c_ms.append((t1 - t0) * 1e3)
                py_ms.append((t2 - t1) * 1e3)
            c, p = statistics.median(c_ms), statistics.median(py_ms)
            print(f"| {n} | {c:.2f} | {p:.2f} | {(c + p) * 1e3 / n:.2f} |")
        with NetnsScope(b.name):
            attacher.detach_all()
        loader.close()


if __name__ == "__main__":
    main()
