"""Where W2's merge spends the pipeline thread's CPU: per row, growth, first touch.

Usage: ``python bench/cache/w2_merge.py [--runs 3] [--batch 8192]``

Under W2's flood (bench/compare: 200k flows of 3 packets, 100k at once) the NFLOG reader
appends one row per packet (append mode: a flow's packets are ~0.7 s apart, far beyond its
200 ms of summing), and the cache's ``agent_cache_flows`` merges 600k rows into a table that
grows from empty to 200k flows. This bench feeds the same row stream (two blocks of 100k
flows, each flow's 3 rows in 3 shuffled passes over its block, ``--batch`` rows a batch, as
the reader's 8,192-row takes) through a real ``FlowCache``, each case in a fresh process so
the first one meets memory the process never touched, and prints the median CPU ms
(``time.process_time``) and minor faults over ``--runs`` of:

* ``fresh``: the process's first table, growing from empty (what the agent's first flood
  pays: the index's keys and buckets, the columns and their page faults);
* ``grown``: a second table in the same process, growing again in memory the first one
  freed (no page faults: the cost of growing alone);
* ``sized``: a table made with ``[cache] hashsize`` = 262,144 (room for every flow at
  start, in that same reused memory: the per-row work plus the inserts, no growth);
* ``hits``: the same stream again into the full table (every key present: the per-row
  lookup and column merge only).

docs/performance.md, "NFLOG W2's flood above the floor".
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench_flows import T0, batch_for, keys  # noqa: E402

from netflow_agent.model import FlowBatch  # noqa: E402
from netflow_agent.stages.cache import CacheConfig, FlowCache  # noqa: E402

CASES = ("fresh", "grown", "sized", "hits")


def row_stream(batch: int) -> list[FlowBatch]:
    """W2's rows as the reader hands them on: one per packet, in ``batch``-row batches."""
    flows = batch_for(keys(200_000), 0).flows
    rng = np.random.default_rng(1)
    order = np.concatenate([block * 100_000 + rng.permutation(100_000)
                            for block in range(2) for _packet in range(3)])
    rows = flows[order].copy()
    rows["packets"], rows["octets"] = 1, 100
    rows["start_ns"] = T0 + np.arange(len(rows)) * 3000
    rows["end_ns"] = rows["start_ns"]
    return [FlowBatch("w2", rows[lo:lo + batch].copy()) for lo in range(0, len(rows), batch)]


def merge(cache: FlowCache, batches: list[FlowBatch]) -> tuple[float, int]:
    """CPU ms and minor faults of merging every batch into ``cache``."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.process_time()
    for b in batches:
        cache.agent_cache_flows(batch=b, now_ns=T0)
    return ((time.process_time() - started) * 1e3,
            resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)


def one(batch: int) -> dict[str, tuple[float, int]]:
    """Every case once, in this (fresh) process, in :data:`CASES` order."""
    batches = row_stream(batch)
    out = {"fresh": merge(FlowCache(CacheConfig(maxflows=0)), batches)}
    out["grown"] = merge(FlowCache(CacheConfig(maxflows=0)), batches)
    full = FlowCache(CacheConfig(maxflows=0, hashsize=262_144))
    out["sized"] = merge(full, batches)
    out["hits"] = merge(full, batches)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="fresh processes")
    ap.add_argument("--batch", type=int, default=8192, help="rows per batch")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.batch)))
        return
    runs = [json.loads(subprocess.run([sys.executable, __file__, "--one", "--batch",
                                       str(args.batch)], capture_output=True, text=True,
                                      check=True).stdout) for _ in range(args.runs)]
    print(f"600,000 rows (200,000 flows x 3 packets, 100,000 at once) in {args.batch}-row "
          f"batches; median of {args.runs} processes (min-max)")
    for case in CASES:
        ms = [r[case][0] for r in runs]
        faults = statistics.median(r[case][1] for r in runs)
        print(f"  {case:6s} {statistics.median(ms):6.1f} ms ({min(ms):.1f}-{max(ms):.1f}), "
              f"{statistics.median(ms) / 0.6:.0f} ns per row, {faults:,.0f} minor faults")


if __name__ == "__main__":
    main()
