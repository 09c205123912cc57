"""Flow-delta benchmark: what the cache costs per flow on the eBPF / NFLOG-C path.

Usage: ``python bench/cache/bench_flows.py [--flows 100000] [--rounds 3] [--runs 5] [--batch N]
[--shuffle]``

The kernel-map drain and the NFLOG C aggregator hand the cache pre-aggregated flow deltas.
Measured here, in one process, with the real ``FlowCache``:

* **merge**: ``--rounds`` batches of ``--flows`` deltas (every flow once per batch, as a
  drain every tick gives) through ``agent_cache_flows``; with ``--batch N`` each round goes
  in batches of ``N`` rows (the eBPF drain hands over 4,096-row steps), with ``--shuffle``
  in a random order per round (a drain gives rows in the kernel map's hash order, so each
  row's index bucket, key and columns are cache misses);
* **expire**: one forced expiry of every flow (``agent_cache_expire``), i.e. the hand-off
  to aggregation and export.

Prints the median over ``--runs`` of µs per flow for each step. The input is built the way
this tree's ingests build it: a columnar ``FlowBatch`` when the tree has ``agent.schema``
(the record array the drains produce), else a list of ``FlowDelta`` objects (the trees
before the flow schema). So running the same command in two checkouts compares the designs
(docs/performance-history.md, "Flow cache: the delta path"; current figures in
docs/performance.md, "Flow cache and flow index").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from netflow_agent import model  # noqa: E402
from netflow_agent.model import FlowBatch, FlowDelta, make_key  # noqa: E402
from netflow_agent.stages.cache import CacheConfig, FlowCache  # noqa: E402

#: whether this tree has the flow schema (columnar batches) or FlowDelta lists
COLUMNAR = hasattr(model, "concat")
T0 = 1_700_000_000_000_000_000


def keys(flows: int) -> list[bytes]:
    """Distinct IPv4 UDP keys: addresses and ports differ."""
    return [make_key(4, 17, (0x0A000000 + i).to_bytes(4, "big"),
                     (0xC0000000 + (i * 7919) % (1 << 24)).to_bytes(4, "big"),
                     1024 + i % 60000, 53 + i % 7) for i in range(flows)]


def batch_for(all_keys: list[bytes], round_no: int) -> Any:
    """One drain's worth of deltas, in this tree's input format."""
    start = T0 + round_no * 1_000_000_000
    if not COLUMNAR:
        return FlowBatch("bench", [FlowDelta(k, 2, 200, start, start + 1000) for k in all_keys])
    from netflow_agent.schema import active

    schema = active()
    flows = schema.empty(len(all_keys))
    decoded = schema.decode_keys(all_keys)
    for f in schema.key_fields:
        flows[f.name] = decoded[f.name]
    flows["packets"], flows["octets"] = 2, 200
    flows["start_ns"], flows["end_ns"] = start, start + 1000
    return FlowBatch("bench", flows)


def split(batch: Any, rows: int, shuffle: bool = False) -> list[Any]:
    """``batch`` as batches of at most ``rows`` rows (0: whole), each its own array, its
    rows in a random order with ``shuffle``."""
    if not COLUMNAR or not (rows or shuffle):
        return [batch]
    flows = batch.flows
    if shuffle:
        flows = flows[np.random.default_rng(len(flows)).permutation(len(flows))]
    rows = rows or len(flows)
    return [FlowBatch("bench", flows[lo:lo + rows].copy()) for lo in range(0, len(flows), rows)]


def run_once(flows: int, rounds: int, rows: int = 0,
             shuffle: bool = False) -> tuple[float, float]:
    """µs per flow for merging ``rounds`` batches (in steps of ``rows``), and for expiring
    everything."""
    all_keys = keys(flows)
    batches = [part for r in range(rounds) for part in split(batch_for(all_keys, r), rows, shuffle)]
    cache = FlowCache(CacheConfig(maxflows=0))
    started = time.perf_counter()
    for r, batch in enumerate(batches):
        cache.agent_cache_flows(batch=batch, now_ns=T0 + r)
    merged = time.perf_counter() - started
    started = time.perf_counter()
    out = cache.agent_cache_expire(now_ns=T0 + rounds * 10**9, force=True)
    expired = time.perf_counter() - started
    assert len(out) == flows and cache.active_flows == 0
    return merged / (flows * rounds) * 1e6, expired / flows * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=0,
                        help="rows per batch (default: a round in one batch)")
    parser.add_argument("--shuffle", action="store_true",
                        help="rows in a random order per round, as a drain gives them")
    args = parser.parse_args()
    results = [run_once(args.flows, args.rounds, args.batch, args.shuffle)
               for _ in range(args.runs)]
    merge = statistics.median(r[0] for r in results)
    expire = statistics.median(r[1] for r in results)
    design = "columnar FlowBatch" if COLUMNAR else "FlowDelta objects"
    step = (f", batches of {args.batch}" if args.batch else "") + (
        ", shuffled" if args.shuffle else "")
    print(f"{design}: {args.flows} flows x {args.rounds} rounds{step}, median of {args.runs} runs")
    print(f"  merge  {merge:.3f} us/flow")
    print(f"  expire {expire:.3f} us/flow")


if __name__ == "__main__":
    main()
