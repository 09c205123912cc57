"""bench/cache/take_parts.py: CPU and page faults per flow of the cache's forced take.

What the stop's forced scan asks of the cache (``agent/loop.py``): ``agent_cache_expire(force=
True, limit=EXPORT_ROWS)`` again and again until the table is empty, each call a FlowBatch of
at most :data:`agent.loop.EXPORT_ROWS` flows. Measured here without the exporters, in one
process: the real :class:`~agent.stages.cache.FlowCache` is filled with ``--flows`` flows
(:func:`bench.export.workload.make_records`, in drain-sized FlowBatches), then emptied part
by part; every part is dropped before the next is taken, as the exporters drop it once
encoded. glibc's ``M_MMAP_THRESHOLD`` is set as the agent sets it (128 KiB, ``agent/cli.py``)
unless ``--mmap-threshold`` says otherwise.

Printed, medians of ``--runs``: CPU ns per flow (``time.thread_time``) and minor page faults
per 1,000 flows (``getrusage``) of the take, how far the process's anonymous RSS rose above
its level after the fill while a part was alive (read after each call, outside the timing:
file-backed pages differ between two checkouts' virtualenvs, not with the code), and a digest
of every part's rows (the same digest in two checkouts: the same flows, columns and end
reasons, in the same order).

Run: ``python3 bench/cache/take_parts.py [--flows 200000] [--runs 5] [--fin]``.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.export.workload import (  # noqa: E402
    FILL_ROWS,
    set_mmap_threshold,
    stop_batch,
    stop_options,
)
from netflow_agent import heap  # noqa: E402
from netflow_agent.loop import EXPORT_ROWS  # noqa: E402
from netflow_agent.model import FlowBatch  # noqa: E402
from netflow_agent.stages.cache import CacheConfig, FlowCache  # noqa: E402

PAGE = resource.getpagesize()


def filled(batch: FlowBatch, now: int) -> FlowCache:
    """A cache holding every flow of ``batch``, merged as the eBPF drain hands them over."""
    cache = FlowCache(CacheConfig(maxflows=0))
    for i in range(0, len(batch), FILL_ROWS):
        cache.agent_cache_flows(FlowBatch("bench", batch.flows[i:i + FILL_ROWS]), now)
    return cache


def anon_rss_mb() -> float:
    """The process's anonymous resident memory now, MB (``/proc/self/statm``)."""
    _size, resident, shared = Path("/proc/self/statm").read_text().split()[:3]
    return (int(resident) - int(shared)) * PAGE / (1 << 20)


def one_run(batch: FlowBatch, now: int, digest: bool) -> tuple[float, float, str, float]:
    """ns per flow and page faults per 1,000 flows of emptying one filled cache; the digest
    of the parts' rows (with ``digest``, outside the timing); the most anonymous RSS (MB)
    above the filled cache's while a part was alive."""
    cache = filled(batch, now)
    flows, spent, faults, parts = cache.active_flows, 0.0, 0, hashlib.sha256()
    base = peak = anon_rss_mb()
    with heap.reuse_parts():  # as the agent's forced scan does (agent.loop)
        while True:
            f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.thread_time()
            part = cache.agent_cache_expire(now_ns=now, force=True, limit=EXPORT_ROWS)
            spent += time.thread_time() - t0
            faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
            peak = max(peak, anon_rss_mb())
            if digest:
                parts.update(np.ascontiguousarray(part.flows).tobytes())
            n = len(part)
            del part  # the exporters drop a part once it is encoded
            if n < EXPORT_ROWS:
                break
    assert cache.active_flows == 0
    return (spent / flows * 1e9, faults / flows * 1e3, parts.hexdigest()[:16],
            peak - base)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    stop_options(ap, runs=5)
    args = ap.parse_args()
    set_mmap_threshold(args.mmap_threshold, not args.no_part_reuse)
    now = 1_800_000_000_000_000_000
    batch = stop_batch(args.flows, now, args.fin, "bench")
    runs = [one_run(batch, now, digest=i == 0) for i in range(args.runs + 1)]
    ns = statistics.median(r[0] for r in runs[1:])
    faults = statistics.median(r[1] for r in runs[1:])
    rss = statistics.median(r[3] for r in runs[1:])
    print(f"{args.flows:,} flows, parts of {EXPORT_ROWS}, median of {args.runs}: take "
          f"{ns:.1f} ns/flow, {faults:.1f} page faults per 1,000 flows, anonymous RSS "
          f"+{rss:.2f} MB; rows digest {runs[0][2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
