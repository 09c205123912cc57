"""What ``[cache] aggregation`` costs per packet: no rules, rules that match nothing, the
seed's rules, and the memo's worst case (more distinct keys than it holds).

Usage: ``python bench/cache/bench_aggregation.py [--runs 5]``

The workload of ``bench_cache.py`` (1,000,000 packets at random over 100,000 flows from
10.0.0.0/8, batches of 1024) fed to ``FlowCache.agent_cache_packets``; prints the best CPU
time per packet of the runs and the flows left in the table. The seed's ``10.0.0.0/8=16``
folds the 100,000 sources into two /16s, so the table keeps the flows that still differ by
source port; the folding rules also map source ports 1024-65535 to 1024, leaving 2 flows.
"memo thrash" shrinks the rewrite memo to 16,384 keys so most lookups miss and
pay the full rewrite (split, mask, repack).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cache import PACKETS, workload  # noqa: E402

from netflow_agent import keyrules  # noqa: E402
from netflow_agent.model import PacketBatch  # noqa: E402
from netflow_agent.stages.cache import CacheConfig, FlowCache  # noqa: E402

SEED = "192.0.0.0/8=16,10.0.0.0/8=16,80-89=80,3128=80"
FOLD = "10.0.0.0/8=16,1024-65535=1024"  # sources and their ports folded: 2 flows left
CASES = (("no rules", "", keyrules.MEMO_MAX),
         ("rules matching nothing", "172.16.0.0/12=16,6000-6100=6000", keyrules.MEMO_MAX),
         ("seed rules", SEED, keyrules.MEMO_MAX),
         ("folding rules", FOLD, keyrules.MEMO_MAX),
         ("seed rules, memo thrash", SEED, 1 << 14))


def run(batches: list, rules: str) -> tuple[float, int]:
    """CPU ns per packet and active flows after one pass."""
    cache = FlowCache(CacheConfig(maxflows=0, aggregation=rules))
    t = time.process_time()
    for b in batches:
        cache.agent_cache_packets(batch=PacketBatch("bench", b), now_ns=0)
    return (time.process_time() - t) / PACKETS * 1e9, cache.active_flows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    batches = workload()
    for name, rules, memo in CASES:
        keyrules.MEMO_MAX = memo
        results = [run(batches, rules) for _ in range(args.runs)]
        best = min(ns for ns, _ in results)
        print(f"{name:26s} {best:6.0f} ns/packet  active flows {results[0][1]}")


if __name__ == "__main__":
    main()
