"""Flow index micro-benchmark: CPU ns per key and memory per flow, C FlowIndex vs a dict.

Usage::

    python bench/cache/bench_flowindex.py [--runs 3] [--flows 100000 1000000] [--impl FlowIndex]

The index measured is the one the running interpreter imports: run it with another checkout's
``.venv/bin/python`` to measure that checkout's ``FlowIndex`` (before/after, alternating).

For each flow count N, in a fresh child process per run and implementation:

* ``insert``: N distinct 44-byte packed keys (today's key: version, protocol, TOS, direction,
  interface, ports, 16-byte addresses; IPv4 zero-padded) looked up and inserted in batches of
  1024, as the cache receives them; ``find``: the same keys again, all present. CPU time
  (``time.process_time``) per key.
* ``remove``: then every key out again as a forced scan at stop takes them: the lowest
  16,384 slots (``occupied(16384)``) removed at a time until the index is empty (the dict:
  ``del`` per key). CPU time per key.
* ``remove_random`` (``FlowIndex`` only): the keys inserted again and removed in a random
  order, 8,192 slots per call, as timeouts take flows from anywhere in the table (the freed
  slots scattered, then reused lowest first by the next inserts).
* memory: RSS growth from just before the first insert to after the last, divided by N.

Implementations, side by side in the same run:

* ``FlowIndex``: ``netflow_agent._flowindex.FlowIndex(44).lookup(batch)`` on the contiguous
  key buffer (a batch's key column).
* ``dict``: what ``FlowCache`` did before (a ``dict[bytes, int]`` index plus a ``keys`` list
  of the key objects, ``get`` then insert), given the keys as ready ``bytes`` objects (its
  best case: splitting a key column into objects is not timed, though the objects are
  counted in its memory because the table keeps them).

Prints the median over the runs. CPU times on a shared machine are noisy: compare the two
columns of one run rather than absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BATCH = 1024

CHILD = r"""
import gc, json, sys, time
import numpy as np
sys.path.insert(0, {root!r})
from netflow_agent import heap
heap.pin()
from netflow_agent._flowindex import FlowIndex

N, BATCH, IMPL = {flows}, {batch}, {impl!r}
KEY = np.dtype([("version", "u1"), ("protocol", "u1"), ("tos", "u1"), ("direction", "u1"),
                ("in_if", "<u4"), ("src_port", ">u2"), ("dst_port", ">u2"),
                ("src", "V16"), ("dst", "V16")])
assert KEY.itemsize == 44
rng = np.random.default_rng(1)
keys = np.zeros(N, dtype=KEY)
keys["version"], keys["in_if"] = 4, 2
keys["protocol"] = rng.choice(np.array([1, 6, 17], dtype=np.uint8), N)
keys["src_port"] = rng.integers(1024, 65536, N)
keys["dst_port"] = rng.integers(1, 1024, N)
addr = np.zeros((N, 16), dtype=np.uint8)
src4 = (0x0A000000 + np.arange(N)).astype(">u4")
addr[:, :4] = src4.view(np.uint8).reshape(N, 4)
keys["src"] = addr.view("V16").ravel()
addr[:, :4] = rng.integers(0, 256, (N, 4), dtype=np.uint8)
keys["dst"] = addr.view("V16").ravel()
raw = keys.tobytes()
del keys, addr
step = BATCH * 44
batches = [raw[i:i + step] for i in range(0, len(raw), step)]

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

if IMPL == "dict":
    objs = [[b[i:i + 44] for i in range(0, len(b), 44)] for b in batches]
    def run():
        for batch in objs:
            for k in batch:
                i = index.get(k)
                if i is None:
                    i = len(table_keys)
                    index[k] = i
                    table_keys.append(k)
    index, table_keys = {{}}, []
    # the key objects exist already but belong to the table: count them as grown
    gc.collect(); before = rss() - sum(map(sys.getsizeof, (k for b in objs for k in b)))
else:
    fi = FlowIndex(44)
    def run():
        for batch in batches:
            fi.lookup(batch)
    gc.collect(); before = rss()
t = time.process_time(); run(); insert = time.process_time() - t
gc.collect(); grown = rss() - before
t = time.process_time(); run(); find = time.process_time() - t
size = len(index) if IMPL == "dict" else len(fi)
assert size == N, size
out = dict(insert_ns=insert / N * 1e9, find_ns=find / N * 1e9, rss_per_flow=grown / N)
if IMPL != "dict":
    out["memory_bytes_per_flow"] = fi.memory_bytes() / N
    # the forced scan at stop: the lowest 16k slots out at a time until the index is empty
    t = time.process_time()
    while len(fi):
        fi.remove(fi.occupied(16384))
    out["remove_ns"] = (time.process_time() - t) / N * 1e9
    run()
    order = np.random.default_rng(2).permutation(N).astype(np.int64)
    t = time.process_time()
    for i in range(0, N, 8192):
        fi.remove(order[i:i + 8192].copy())
    out["remove_random_ns"] = (time.process_time() - t) / N * 1e9
else:
    t = time.process_time()
    for k in table_keys:
        del index[k]
    out["remove_ns"] = (time.process_time() - t) / N * 1e9
print(json.dumps(out))
"""


def measure(impl: str, flows: int) -> dict[str, float]:
    """One fresh child process: ``insert_ns``, ``find_ns`` per key and ``rss_per_flow``."""
    code = CHILD.format(root=str(ROOT), flows=flows, batch=BATCH, impl=impl)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--flows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--impl", nargs="+", choices=("FlowIndex", "dict"),
                    default=["FlowIndex", "dict"], help="what to measure (default: both)")
    args = ap.parse_args()
    print(f"{'flows':>9} {'impl':<9} {'insert ns/key':>13} {'find ns/key':>11} "
          f"{'remove ns/key':>13} {'RSS B/flow':>10}  (median of {args.runs} runs, CPU time)")
    for flows in args.flows:
        for impl in args.impl:
            runs = [measure(impl, flows) for _ in range(args.runs)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            extra = (f"  memory_bytes() {med['memory_bytes_per_flow']:.0f} B/flow, "
                     f"remove_random {med['remove_random_ns']:.0f} ns/key"
                     if "memory_bytes_per_flow" in med else "")
            print(f"{flows:>9,} {impl:<9} {med['insert_ns']:>13.0f} {med['find_ns']:>11.0f} "
                  f"{med['remove_ns']:>13.0f} {med['rss_per_flow']:>10.0f}{extra}")


if __name__ == "__main__":
    main()
