"""What ``[cache] aggregation`` costs per packet: no rules, rules that match nothing, the
seed's rules, and rules that fold the table.

Usage: ``python bench/cache/bench_aggregation.py [--runs 5]``

The workload of ``bench_cache.py`` (1,000,000 packets at random over 100,000 flows from
10.0.0.0/8, batches of 1024) fed to ``FlowCache.agent_cache_packets`` twice; prints the best
CPU time per packet of each pass over the runs (the first pass meets every key for the first
time, about 10 packets per flow; the second knows them all) and the flows in the table. The
seed's ``10.0.0.0/8=16`` folds the 100,000 sources into two /16s, so the table keeps the
flows that still differ by source port; the folding rules also map source ports 1024-65535
to 1024, leaving 2 flows. The rules rewrite each batch's key columns in C
(``KeyRules.apply``: ``agent/_flowindex.c``'s ``rewrite_keys``), so a key costs the same on
both passes.
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

SEED = "192.0.0.0/8=16,10.0.0.0/8=16,80-89=80,3128=80"
FOLD = "10.0.0.0/8=16,1024-65535=1024"  # sources and their ports folded: 2 flows left
CASES = (("no rules", ""),
         ("rules matching nothing", "172.16.0.0/12=16,6000-6100=6000"),
         ("seed rules", SEED),
         ("folding rules", FOLD))


def run(batches: list, rules: str) -> tuple[float, float, int]:
    """CPU ns per packet of a first pass (every key new) and of a second pass over the same
    packets (the table warm), and the active flows."""
    cache = FlowCache(CacheConfig(maxflows=0, aggregation=rules))
    passes = []
    for _ in range(2):
        t = time.process_time()
        for b in batches:
            cache.agent_cache_packets(batch=PacketBatch("bench", b), now_ns=0)
        passes.append((time.process_time() - t) / PACKETS * 1e9)
    return passes[0], passes[1], cache.active_flows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    batches = workload()
    for name, rules in CASES:
        results = [run(batches, rules) for _ in range(args.runs)]
        first, second = min(r[0] for r in results), min(r[1] for r in results)
        print(f"{name:26s} first pass {first:5.0f} ns/packet   second pass {second:5.0f} "
              f"ns/packet   active flows {results[0][2]}")


if __name__ == "__main__":
    main()
