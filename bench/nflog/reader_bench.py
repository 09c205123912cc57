"""The NFLOG reader thread's C work per packet, builds side by side (CPU time, offline).

``python bench/nflog/reader_bench.py --concurrent 200000 --builds /tmp/old/_nflog.so
plugins/ingest_nflog/_nflog.cpython-311-x86_64-linux-gnu.so``: the kernel-shaped datagrams of
``scale_bench.py`` (64 messages each, ``--concurrent`` flows in turn) fed into each build's
``Aggregator``, its table taken as the reader does (once :data:`HOLD` flows are pending,
native FlowBatch rows, at most ``TAKE_LIMIT`` at a time; built with ``hold=HOLD`` as the
reader builds it, so append mode runs where it would) and each batch's rows viewed as the
record array and dropped, as the pipeline does after merging them. No socket and no cache:
what the reader thread adds per packet besides ``recv``. Builds alternate within each round
(the machine is shared); medians of ``--rounds``. Every build must have the bounded native
``take(limit, native=True)`` (since the columnar FlowBatch). The agent's malloc setting
applies (``scale_bench`` sets it): a batch's rows are their own mmap.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from bench.nflog.scale_bench import aggregator, datagrams  # noqa: E402  (sets the malloc threshold)
from netflow_agent.plugins.ingest_nflog.component import _HOLD_FLOWS as HOLD  # noqa: E402
from netflow_agent.plugins.ingest_nflog.decoders import NATIVE_DTYPE, TAKE_LIMIT  # noqa: E402


def load(path: str) -> ModuleType:
    """A ``_nflog`` build from its file."""
    spec = importlib.util.spec_from_file_location("_nflog", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(module: ModuleType, bufs: list[bytearray]) -> float:
    """CPU ns per packet: feed every datagram, take as the reader does, drop the batches."""
    agg = aggregator(module, HOLD)
    packets = 0
    start = time.process_time()
    for i, buf in enumerate(bufs, 1):
        packets += agg.feed(buf, len(buf), 0)
        if agg.pending < HOLD and i != len(bufs):
            continue
        while agg.pending:
            rows = np.frombuffer(agg.take(TAKE_LIMIT, native=True)[0], NATIVE_DTYPE)
            del rows  # merged and freed by the pipeline thread
    return (time.process_time() - start) / packets * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--builds", nargs="+", required=True, help="_nflog .so files")
    ap.add_argument("--concurrent", type=int, nargs="+", default=[100000, 200000])
    ap.add_argument("--packets", type=int, default=600_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    modules = [load(p) for p in args.builds]
    for concurrent in args.concurrent:
        bufs = datagrams(concurrent, args.packets)
        times: list[list[float]] = [[] for _ in modules]
        for _ in range(args.rounds):
            for module, out in zip(modules, times, strict=True):
                out.append(run(module, bufs))
        for path, out in zip(args.builds, times, strict=True):
            print(f"concurrent {concurrent:>7}  {path}: {statistics.median(out):.1f} ns/packet "
                  f"(median of {len(out)}, {min(out):.1f}-{max(out):.1f})", flush=True)


if __name__ == "__main__":
    main()
