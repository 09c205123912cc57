"""What ``[cache] sampler`` costs per packet: no sampler, ``hash:10``, ``deterministic:10``.

Usage: ``python bench/cache/bench_sampler.py [--runs 5]``

The workload of ``bench_cache.py`` (1,000,000 packets over 100,000 flows, batches of 1024) fed
to ``FlowCache.agent_cache_packets``; prints the best CPU time per packet of the runs and the
flows left in the table. ``hash:N`` should cost less per packet than no sampler (unselected
packets stop at the index miss and a set hit) and keep about 1/N of the flows;
``deterministic``/``random`` select at export, so their per-packet cost equals no sampler.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cache import PACKETS, workload  # noqa: E402

from netflow_agent.model import PacketBatch  # noqa: E402
from netflow_agent.stages.cache import CacheConfig, FlowCache  # noqa: E402


def run(batches: list, sampler: str) -> tuple[float, int]:
    """CPU ns per packet and active flows after one pass."""
    cache = FlowCache(CacheConfig(maxflows=0, sampler=sampler))
    t = time.process_time()
    for b in batches:
        cache.agent_cache_packets(batch=PacketBatch("bench", b), now_ns=0)
    return (time.process_time() - t) / PACKETS * 1e9, cache.active_flows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    batches = workload()
    for sampler in ("", "hash:10", "deterministic:10"):
        results = [run(batches, sampler) for _ in range(args.runs)]
        best = min(ns for ns, _ in results)
        print(f"{sampler or 'none':18s} {best:6.0f} ns/packet  active flows {results[0][1]}")


if __name__ == "__main__":
    main()
