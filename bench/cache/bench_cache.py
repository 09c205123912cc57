"""Flow cache benchmark: packet updates per second and memory per active flow.

Usage: ``python bench/cache/bench_cache.py [--runs 5] [--flow mac,vlan]``

``--flow`` turns on optional ``[flow]`` key fields (``mac``, ``vlan``, ``mpls_labels=N``): keys
then carry the schema's extra bytes (MACs, a VLAN id out of four), as an ingest that sees them
builds them; the default measures the classic 44-byte key.

* throughput: 1,000,000 packets spread at random over 100,000 flows, fed in batches of 1024
  (as ingests do) to the real ``FlowCache``; side by side with a peer, the obvious Python
  design (a dict of per-flow lists), measured in the same run;
* memory: RSS growth of a fresh process after 1,000,000 flows (one packet each), divided by
  the flow count; measured in a child process per run so runs do not share heaps.

Prints medians over the runs and the ratio to the peer. Timings are noisy on shared machines;
compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from netflow_agent.model import PacketBatch, make_key  # noqa: E402
from netflow_agent.stages.cache import CacheConfig, FlowCache  # noqa: E402

PACKETS, FLOWS, BATCH = 1_000_000, 100_000, 1024


def use_flow_fields(spec: str) -> None:
    """Make ``spec`` (``"mac,vlan,mpls_labels=2"``) the process's flow schema."""
    if not spec:
        return
    from netflow_agent.schema import FlowOptions, FlowSchema, set_active

    opts: dict[str, object] = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        opts[name] = int(value) if value else True
    set_active(FlowSchema.build(FlowOptions(**opts)))  # type: ignore[arg-type]


def ext_for(i: int) -> bytes:
    """The optional key fields of flow ``i`` under the active schema (b"" by default)."""
    from netflow_agent.schema import active

    schema = active()
    if not schema.ext_size:
        return b""
    return schema.pack_ext({"src_mac": b"\x02\0\0\0\0\x01", "dst_mac": b"\x02\0\0\0\0\x02",
                            "ethernet_type": 0x0800, "vlan_id": 100 + i % 4,
                            "mpls_label_1": (16 + i % 4) << 4 | 1})


def workload(seed: int = 1) -> list[list[tuple[bytes, int, int, int, int]]]:
    dst = socket.inet_aton("192.0.2.1")
    keys = [make_key(4, 17, (0x0A000000 + i).to_bytes(4, "big"), dst, 1024 + i % 60000, 53,
                     ext=ext_for(i)) for i in range(FLOWS)]
    rnd = random.Random(seed)
    pkts = [(keys[rnd.randrange(FLOWS)], 100 + (i & 511), 0, 1_700_000_000_000_000_000 + i, 0)
            for i in range(PACKETS)]
    return [pkts[i:i + BATCH] for i in range(0, PACKETS, BATCH)]


def run_agent_cache(batches: list) -> float:
    cache = FlowCache(CacheConfig(maxflows=0))
    t = time.perf_counter()
    for b in batches:
        cache.agent_cache_packets(batch=PacketBatch("bench", b), now_ns=0)
    return PACKETS / (time.perf_counter() - t)


def run_peer_dict(batches: list) -> float:
    """The peer: flows[key] = [packets, bytes, first, last, flags]."""
    flows: dict[bytes, list[int]] = {}
    t = time.perf_counter()
    for b in batches:
        for key, length, flags, ts, _out in b:
            f = flows.get(key)
            if f is None:
                flows[key] = [1, length, ts, ts, flags]
            else:
                f[0] += 1
                f[1] += length
                f[3] = ts
                f[4] |= flags
    return PACKETS / (time.perf_counter() - t)


CHILD = r"""
import gc, sys
sys.path.insert(0, {root!r})
from netflow_agent import heap
heap.pin()
from bench.cache.bench_cache import use_flow_fields, ext_for
use_flow_fields({flow!r})
from netflow_agent.model import PacketBatch, make_key
from netflow_agent.stages.cache import CacheConfig, FlowCache
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
dst = bytes([192, 0, 2, 1])
gc.collect(); before = rss()
if {peer}:
    flows = {{}}
    for i in range(1_000_000):
        k = make_key(4, 6, i.to_bytes(4, 'big'), dst, i & 0xFFFF, 80, ext=ext_for(i))
        flows[k] = [1, 100, 1_700_000_000_000_000_000 + i, 1_700_000_000_000_000_000 + i, 0]
else:
    cache = FlowCache(CacheConfig(maxflows=0))
    batch = []
    for i in range(1_000_000):
        k = make_key(4, 6, i.to_bytes(4, 'big'), dst, i & 0xFFFF, 80, ext=ext_for(i))
        batch.append((k, 100, 0, 1_700_000_000_000_000_000 + i, 0))
        if len(batch) == 1024:
            cache.agent_cache_packets(batch=PacketBatch('m', batch), now_ns=0)
            batch = []
    cache.agent_cache_packets(batch=PacketBatch('m', batch), now_ns=0)
    del batch
gc.collect()
print((rss() - before) / 1_000_000)
"""


def bytes_per_flow(peer: bool, flow: str = "") -> float:
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=root, peer=peer, flow=flow)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--flow", default="", help="optional [flow] key fields, e.g. mac,vlan")
    args = ap.parse_args()
    use_flow_fields(args.flow)
    batches = workload()
    ours, peer, mem, mem_peer = [], [], [], []
    for _ in range(args.runs):
        ours.append(run_agent_cache(batches))
        peer.append(run_peer_dict(batches))
        mem.append(bytes_per_flow(False, args.flow))
        mem_peer.append(bytes_per_flow(True, args.flow))
    m_ours, m_peer = statistics.median(ours), statistics.median(peer)
    b_ours, b_peer = statistics.median(mem), statistics.median(mem_peer)
    print(f"updates/s  FlowCache {m_ours:,.0f}   dict-of-lists peer {m_peer:,.0f}   "
          f"ratio {m_ours / m_peer:.2f}   (runs={args.runs}, flow fields: "
          f"{args.flow or 'default'})")
    print(f"bytes/flow FlowCache {b_ours:.0f}   dict-of-lists peer {b_peer:.0f}   "
          f"ratio {b_ours / b_peer:.2f}   (1M flows, RSS delta)")


if __name__ == "__main__":
    main()
