"""Bench: the CPU of a drain of an empty table when its hash walk is forced or skipped.

The ingest forces the walk of an unmarked hash at stop and every ``FORCED_WALK_EVERY``-th
drain (component.py). This loads (does not attach) a ``Loader`` with a 524,288-entry hash
and 524,288 slots per CPU, flips to table 1, and drains the empty table 0 alternately with
``drain_begin(0, force=True)`` and without, ``--runs`` times each, per map type; prints the
median and the 10th/90th percentile of the process CPU time per drain. Needs root.

    .venv/bin/python bench/ebpf/forced_walk.py --runs 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from netflow_agent.plugins.ingest_ebpf._loader import Loader
from netflow_agent.plugins.ingest_ebpf.decode import RECORD_DTYPE


def drain_ms(loader, force: bool, buf: np.ndarray) -> float:
    """CPU milliseconds of one whole drain of table 0."""
    start = time.process_time_ns()
    loader.drain_begin(0, force=force)
    more = True
    while more:
        _, _, more = loader.drain_next(buf)
    return (time.process_time_ns() - start) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--entries", type=int, default=524288)
    args = parser.parse_args()
    buf = np.empty(16384, RECORD_DTYPE)
    for percpu in (False, True):
        loader = Loader(maxflows=args.entries, prealloc=True, percpu=percpu,
                        slots=args.entries)
        loader.set_active(1)
        loader.synchronize()
        res: dict[bool, list[float]] = {False: [], True: []}
        for i in range(2 * args.runs):
            res[bool(i % 2)].append(drain_ms(loader, bool(i % 2), buf))
        loader.close()
        for force in (False, True):
            v = sorted(res[force])
            k = max(0, len(v) // 10)
            print(f"{'percpu' if percpu else 'shared'} {'forced' if force else 'skipped'}: "
                  f"median {statistics.median(v):.3f} ms CPU, p10 {v[k]:.3f}, "
                  f"p90 {v[-1 - k]:.3f}")


if __name__ == "__main__":
    main()
