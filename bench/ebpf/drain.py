"""bench/ebpf/drain.py: cost of one drain (kernel batch lookup-and-delete, columns, merge) per flow.

Fills the kernel flow table with N distinct flows (one raw UDP frame per flow from
``flowgen.c`` through a veth in fresh namespaces), then drains it as the ingest does, step by
step (``--chunk`` rows): times ``Loader.drain_next()`` (the C part:
``BPF_MAP_LOOKUP_AND_DELETE_BATCH``, the scan of the mmapped per-CPU slots and the rows
written, GIL released), by default straight into FlowBatch columns (the agent's path,
``--decode loader``) or as flow_record rows then ``decode_rows()`` (``--decode numpy``: the
path before issue 14's drain step), and with ``--merge`` the cache's merge of each step
(``FlowCache.agent_cache_flows``, a fresh cache per run: every flow new, as in a flood), all
in CPU time of the one thread (user + kernel: robust to other load on the machine). Medians
of ``--runs``; the last column is the process's peak RSS growth over the whole bench
(``VmHWM`` after minus before the first drain).

Run as root: ``python3 bench/ebpf/drain.py [--runs 5] [--flows 10000 100000] [--maxflows N]
[--prealloc] [--slots 4096] [--probes 8] [--chunk 4096] [--map-type shared]
[--decode loader] [--merge]``.
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

from netflow_agent.libc import libc  # noqa: E402
from netflow_agent.model import FlowBatch  # noqa: E402
from netflow_agent.netns import NetnsScope  # noqa: E402
from netflow_agent.plugins.ingest_ebpf._loader import Loader  # noqa: E402
from netflow_agent.plugins.ingest_ebpf.attach import Attacher  # noqa: E402
from netflow_agent.plugins.ingest_ebpf.component import StepBuffers  # noqa: E402
from netflow_agent.plugins.ingest_ebpf.decode import (  # noqa: E402
    COUNTER_NAMES,
    RECORD_DTYPE,
    decode_rows,
    monotonic_to_wall_offset,
    record_layout,
)
from netflow_agent.schema import active as flow_schema  # noqa: E402
from netflow_agent.stages.cache import CacheConfig, FlowCache  # noqa: E402
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
    ap.add_argument("--probes", type=int, default=8,
                    help="slots of the key's tag word probed per packet, 1-8 (the agent's 8; "
                    "1 = direct-mapped, before issue 14's probing)")
    ap.add_argument("--chunk", type=int, default=4096,
                    help="rows per drain step (the agent's drain_chunk)")
    ap.add_argument("--map-type", choices=("shared", "percpu"), default="shared",
                    help="kernel hash type (the agent's map_type)")
    ap.add_argument("--decode", choices=("loader", "numpy"), default="loader",
                    help="loader: rows written straight into FlowBatch columns (the agent's "
                         "path); numpy: flow_record rows, then decode_rows()")
    ap.add_argument("--merge", action="store_true",
                    help="also merge every step into a fresh FlowCache per run (the main "
                         "thread's part: every flow new, as in a flood)")
    args = ap.parse_args()
    libc().mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, as the agent sets it (cli.py)
    with tempfile.TemporaryDirectory() as tmp, Netns() as a, Netns() as b:
        flowgen = build(Path(tmp))
        pair = veth_pair(a, b)
        b.run(["iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "-j", "DROP"])
        loader = Loader(maxflows=args.maxflows, slots=args.slots, prealloc=args.prealloc,
                        chunk_rows=args.chunk, percpu=args.map_type == "percpu",
                        probes=args.probes)
        loader.set_active(0)
        attacher = Attacher(loader, "tcx", "ingress")
        with NetnsScope(b.name):
            attacher.attach(pair.b.ifindex, pair.b.ifname)
        print(f"maxflows {args.maxflows}, {args.map_type} map, prealloc {args.prealloc}, "
              f"slots {args.slots} ({args.probes} probes), chunk {args.chunk}, decode by "
              f"{args.decode}")
        print("| flows | C drain ms | decode ms | merge ms | drain µs/flow | merge µs/flow "
              "| peak RSS growth MB |")
        print("|---|---|---|---|---|---|---|")
        hwm0 = vm_hwm_kb()
        for n in args.flows:
            times = []
            for _ in range(args.runs):
                Flood(n, 1, n).send(flowgen, pair.a, pair.b.mac, pair.b.addr)
                cache = FlowCache(CacheConfig(maxflows=0)) if args.merge else None
                spent, got = drain(loader, args.chunk, args.decode, cache)
                assert got == n, (got, n)
                times.append(spent)
            c, p, m = (statistics.median(t[i] for t in times) * 1e3 for i in range(3))
            print(f"| {n} | {c:.2f} | {p:.2f} | {m:.2f} | {(c + p) * 1e3 / n:.3f} | "
                  f"{m * 1e3 / n:.3f} | {(vm_hwm_kb() - hwm0) / 1024:.1f} |")
        info = loader.slot_info()
        print(f"slot windows of {info['window']} entries scanned: {info['windows_scanned']} "
              f"({info['windows']} per CPU, {info['cpus']} CPUs); slot packets "
              f"{loader.counters()[COUNTER_NAMES.index('slot_packets')]:,}; hash walks "
              f"skipped {info.get('hash_walks_skipped', 'n/a')}")
        with NetnsScope(b.name):
            attacher.detach_all()
        loader.close()


def drain(loader: Loader, chunk: int, decode: str,
          cache: FlowCache | None) -> tuple[tuple[float, float, float], int]:
    """Drain table 0 step by step as the ingest does, after a flip to table 1 and a grace
    period (then back to 0 for the next flood): (seconds in C, decoding, merging), flows."""
    c_s = py_s = merge_s = 0.0
    got, more = 0, True
    loader.set_active(1)
    loader.synchronize()
    loader.drain_begin(0)
    offset = monotonic_to_wall_offset()
    layout, rows_buf = record_layout(), np.empty(chunk, RECORD_DTYPE)
    buffers = StepBuffers(chunk, flow_schema().record_dtype)  # what record_layout() writes
    while more:
        t0 = time.thread_time()
        if decode == "loader":
            flows = buffers.take()  # the agent's reused step arrays
            rows, err, more = loader.drain_next(flows, layout, offset)
            t1 = time.thread_time()
            flows = flows[:rows]
        else:
            rows, err, more = loader.drain_next(rows_buf)
            t1 = time.thread_time()
            flows = decode_rows(rows_buf[:rows], offset)
        t2 = time.thread_time()
        if cache is not None:
            cache.agent_cache_flows(batch=FlowBatch("bench", flows), now_ns=0)
        got += len(flows)
        c_s, py_s = c_s + t1 - t0, py_s + t2 - t1
        merge_s += time.thread_time() - t2
        assert not err, err
    loader.set_active(0)
    loader.synchronize()
    return (c_s, py_s, merge_s), got


def vm_hwm_kb() -> int:
    """This process's peak resident set (KiB)."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmHWM:"))


if __name__ == "__main__":
    main()
