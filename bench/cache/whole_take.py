"""bench/cache/whole_take.py: CPU per flow of one timed scan that takes the whole flow table.

A mass expiry at its extreme: the default ``FlowCache`` holds ``--flows`` W3-like flows
(``bench/export/mass_expiry.py``'s ``w3_flows``: half IPv6, UDP/TCP/ICMP by thirds, 1-3
packets), all idle past the inactive timeout, and one ``agent_cache_expire(force=False)``
takes every one of them into record rows: the due test, the take (a take naming every key
clears the index at once since the tenth stop), the rows' finish. No export: the thread CPU
(``time.thread_time_ns``) of that one call, per flow, median of ``--runs`` fresh caches.

Run: ``python3 bench/cache/whole_take.py [--flows 1000000] [--runs 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "export"))

from mass_expiry import w3_flows  # noqa: E402

from netflow_agent import heap  # noqa: E402
from netflow_agent.model import FlowBatch  # noqa: E402
from netflow_agent.stages.cache import CacheConfig, FlowCache  # noqa: E402

S = 1_000_000_000
FILL_ROWS = 16_384  # rows per merged batch, as bench/export's fill


def one_run(flows: int) -> float:
    """ns of thread CPU per flow of the scan that takes all ``flows``."""
    now = time.time_ns()
    cache = FlowCache(CacheConfig())
    rows = w3_flows(flows, now).flows
    for at in range(0, flows, FILL_ROWS):
        cache.agent_cache_flows(batch=FlowBatch("ingest.fake[0]", rows[at:at + FILL_ROWS]),
                                now_ns=now)
    later = now + 120 * S  # every flow idle past the inactive timeout
    t0 = time.thread_time_ns()
    taken = cache.agent_cache_expire(now_ns=later, force=False)
    cpu = time.thread_time_ns() - t0
    if len(taken) != flows or cache.active_flows:
        raise SystemExit(f"took {len(taken)} of {flows}, {cache.active_flows} left")
    return cpu / flows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    heap.pin()  # glibc's heap as the agent sets it (agent/heap.py)
    runs = [one_run(args.flows) for _ in range(args.runs)]
    print(f"{args.flows:,} flows, one timed scan taking all: "
          f"{statistics.median(runs):.1f} ns per flow (median of {args.runs}; "
          f"{', '.join(f'{r:.1f}' for r in runs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
