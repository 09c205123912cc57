"""Where the C merge of a drained batch spends its CPU: the key lookup vs the column merge.

Usage: ``python bench/cache/merge_split.py [--flows 200000 1000000] [--batch 4096] [--reps 5]
[--runs 3] [--aggregation RULES] [--sampler MODE:N] [--reorder]``

``FlowCache.agent_cache_flows`` merges a record array (the NFLOG reader's appended rows, an
eBPF drain) in two C passes (``FlowTable.merge_records``): ``FlowIndex.lookup_records`` packs
each row's key, hashes it (SipHash-1-3) and probes the index (bucket, stored key), then the
module's ``merge_records`` adds the row's counters into the value columns by slot (one cache
line per column at a random slot). This bench times each pass alone, and the whole hook, on a
table that already holds ``--flows`` flows (the W2 flood's 100k-200k concurrent flows fit the
last-level cache; 1M do not), rows in a random order in batches of ``--batch`` rows: the
order they were inserted in, so a batch's slots run in sequence (each row's key and columns
follow the previous row's in memory); with ``--reorder`` the timed passes take the rows in
another random order (the slots at random, as a flood's later packets find them: W2's
second and third packets of a flow come in an order unrelated to the first ones'). It
answers which pass a cut should go to (docs/performance.md, "NFLOG ingest: where the merge's
CPU goes").

Prints, per flow count, the median over ``--runs`` (a fresh table each) of CPU ns per row
(``time.process_time``) for: ``lookup`` (``lookup_records``, every key present), ``columns``
(``merge_records`` given those slots), ``hook`` (``agent_cache_flows``: both passes plus the
cache's Python around them). ``--aggregation`` / ``--sampler`` set those ``[cache]`` options
(e.g. ``"10.0.0.0/8=16,1024-65535=1024"``: the sources fold into /16s and their ports into
1024, the destinations keep the flows apart; ``hash:10``): the hook then includes the key
rewrite and the selection; the passes are timed only where the batch takes the C merge.
With ``hash:N`` the table holds only the ~1/N keys the hash selects: the other rows are
discarded on every pass (a row's selection is the hook's cost, not a lookup's).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_flows import T0, batch_for, keys, split  # noqa: E402

from netflow_agent._flowindex import merge_records  # noqa: E402
from netflow_agent.model import FlowBatch  # noqa: E402
from netflow_agent.stages.cache import CacheConfig, FlowCache  # noqa: E402


def run_once(flows: int, rows: int, reps: int, config: CacheConfig,
             reorder: bool = False) -> tuple[float, ...]:
    """CPU ns per row of the lookup pass, the column pass and the whole hook (the passes
    NaN when the batch does not take the C merge); ``reorder``: timed in another order than
    the rows were inserted in."""
    batches = split(batch_for(keys(flows), 0), rows, shuffle=True)
    cache = FlowCache(config)
    for batch in batches:  # insert every flow: the passes below find each key
        cache.agent_cache_flows(batch=batch, now_ns=T0)
    if reorder:
        batches = reordered(batches, rows)
    total = flows * reps
    layout = cache._record_layout(batches[0].flows)
    if layout is None or config.aggregation or config.sampler:
        return float("nan"), float("nan"), hook_ns(cache, batches, reps) / total
    table = cache.table
    looked = [table.index.lookup_records(b.flows, layout.stride, layout.ops) for b in batches]
    started = time.process_time()
    for _ in range(reps):
        for b in batches:
            table.index.lookup_records(b.flows, layout.stride, layout.ops)
    lookup = time.process_time() - started
    started = time.process_time()
    for _ in range(reps):
        for b, (slots, new) in zip(batches, looked, strict=True):
            merge_records(b.flows, layout.stride, layout.fields, slots, new, table.packets,
                          table.octets, table.first, table.last, table.flags, table.out_if)
    columns = time.process_time() - started
    return lookup / total * 1e9, columns / total * 1e9, hook_ns(cache, batches, reps) / total


def reordered(batches: list, rows: int) -> list:
    """The rows of ``batches`` in another random order, ``rows`` a batch."""
    flows = np.concatenate([b.flows for b in batches])
    flows = flows[np.random.default_rng(len(flows) + 1).permutation(len(flows))]
    return [FlowBatch("bench", flows[lo:lo + rows].copy()) for lo in range(0, len(flows), rows)]


def hook_ns(cache: FlowCache, batches: list, reps: int) -> float:
    """CPU ns of ``reps`` passes of ``agent_cache_flows`` over ``batches``."""
    started = time.process_time()
    for _ in range(reps):
        for b in batches:
            cache.agent_cache_flows(batch=b, now_ns=T0)
    return (time.process_time() - started) * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=5, help="passes over the table per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--aggregation", default="", help="[cache] aggregation rules")
    parser.add_argument("--sampler", default="", help="[cache] sampler, e.g. hash:10")
    parser.add_argument("--reorder", action="store_true",
                        help="time the rows in another order than they were inserted in")
    args = parser.parse_args()
    config = CacheConfig(maxflows=0, aggregation=args.aggregation, sampler=args.sampler)
    present = ("every key present" if not args.sampler.startswith("hash")
               else "only the keys hash:N selects present, the others discarded")
    order = "timed in another order" if args.reorder else "timed in the insert order"
    print(f"batches of {args.batch} rows, shuffled, {order}, {present}; CPU ns per row, "
          f"median of {args.runs} runs (min-max); aggregation {args.aggregation!r}, "
          f"sampler {args.sampler!r}")
    for flows in args.flows:
        results = [run_once(flows, args.batch, args.reps, config, args.reorder)
                   for _ in range(args.runs)]
        cells = []
        for name, col in zip(("lookup", "columns", "hook"), zip(*results, strict=True),
                             strict=True):
            cells.append(f"{name} {statistics.median(col):5.1f} ({min(col):.1f}-{max(col):.1f})")
        print(f"  {flows:>9,} flows: " + "  ".join(cells))


if __name__ == "__main__":
    main()
