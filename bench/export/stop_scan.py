"""bench/export/stop_scan.py: CPU per flow of the stop's final export, cache included.

What the agent does with every cached flow at SIGTERM, in one process and without ingests:
a pipeline built from TOML (``[[ingest.fake]]`` from :mod:`agent.testing`, the default cache,
``[[export.netflow]]`` v9 at its default ``rate_limit``) is filled with ``--flows`` distinct
flows (:func:`bench.export.workload.make_records`, handed to ``agent_cache_flows`` in drain
sized FlowBatches, as the eBPF ingest does), then ``Pipeline.shutdown()`` runs: the forced
scan in parts of ``agent.loop.EXPORT_ROWS`` (take from the cache, aggregate, encode, queue)
and the exporters' stop (the paced backlog). The collector is another process reading every
datagram (:func:`bench.export.final_export.collector`).

Printed, medians of ``--runs``: CPU µs per flow (``time.process_time``, every thread) of the
forced scan and of the rest of the stop, and the records the exporter lost (must be 0).
glibc's ``M_MMAP_THRESHOLD`` is set as the agent sets it (128 KiB, ``agent/cli.py``) unless
``--mmap-threshold`` (and ``--trim-threshold``) say otherwise. ``--profile FILE`` writes a
cProfile of the first run's shutdown (pipeline thread only). ``--no-gso`` sends without
UDP GSO (A/B).

Run: ``python3 bench/export/stop_scan.py [--flows 200000] [--runs 3] [--profile FILE]``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.export.final_export import collector  # noqa: E402
from bench.export.workload import (  # noqa: E402
    FILL_ROWS,
    set_mmap_threshold,
    stop_batch,
    stop_options,
)
from netflow_agent import heap  # noqa: E402
from netflow_agent.libc import libc  # noqa: E402
from netflow_agent.stages.cache import FlowCache  # noqa: E402
from netflow_agent.testing import fill_cache, v9_export_agent  # noqa: E402
from netflow_agent.transport.udp import UdpDestination  # noqa: E402


def one_run(flows: int, fin: bool, profile: str = "") -> tuple[float, float, float, int]:
    """CPU µs per flow of the forced scan (all threads; the pipeline thread's own) and of
    the rest of the stop; records lost."""
    pid, port = collector()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            agent = v9_export_agent(port, Path(tmp))
            pipeline = agent.pipeline
            now = time.time_ns()
            fill_cache(agent, stop_batch(flows, now, fin, "ingest.fake[0]"), FILL_ROWS)
            cached = sum(c.active_flows for c in pipeline.components.values()
                         if isinstance(c, FlowCache))  # make_records' IPv6 flows repeat
            scan = pipeline.loop.scan
            times: list[tuple[float, float]] = []

            def timed_scan(at: int, force: bool = False) -> None:
                t0, c0 = time.process_time(), time.thread_time()
                scan(at, force)
                times.append((time.process_time() - t0, time.thread_time() - c0))

            pipeline.loop.scan = timed_scan  # type: ignore[method-assign]
            prof = cProfile.Profile() if profile else None
            t0 = time.process_time()
            if prof:
                prof.enable()
            pipeline.shutdown()
            if prof:
                prof.disable()
                prof.dump_stats(profile)
            total = time.process_time() - t0
            exporter = pipeline.components["export.netflow[0]"]
            lost = int(exporter.agent_collect_stats().get("lost_records", 0))
            exported = pipeline.loop.exported_flows
    finally:
        os.waitpid(pid, 0)
    assert exported == cached, f"exported {exported} of {cached} cached flows"
    forced, pipeline_cpu = (sum(t[i] for t in times) for i in (0, 1))
    return (forced / exported * 1e6, pipeline_cpu / exported * 1e6,
            (total - forced) / exported * 1e6, lost)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    stop_options(ap, runs=3)
    ap.add_argument("--trim-threshold", type=int, default=0,
                    help="glibc M_TRIM_THRESHOLD in bytes (0: glibc's)")
    ap.add_argument("--profile", default="", help="cProfile output of the first run")
    ap.add_argument("--no-gso", action="store_true",
                    help="send without UDP GSO (UdpDestination.use_gso off), for A/B")
    args = ap.parse_args()
    UdpDestination.use_gso = not args.no_gso
    set_mmap_threshold(args.mmap_threshold, not args.no_part_reuse)
    if args.trim_threshold:
        libc().mallopt(heap.M_TRIM_THRESHOLD, args.trim_threshold)
    runs = [one_run(args.flows, args.fin, args.profile if i == 0 else "")
            for i in range(args.runs)]
    scan, own, rest = (statistics.median(r[i] for r in runs) for i in (0, 1, 2))
    total = statistics.median(r[0] + r[2] for r in runs)
    print(f"{args.flows:,} flows, medians of {args.runs}: CPU µs per flow")
    print("| forced scan | of it the pipeline thread | rest of the stop | total | records lost |"
          "\n|---|---|---|---|---|")
    print(f"| {scan:.3f} | {own:.3f} | {rest:.3f} | {total:.3f} | {max(r[3] for r in runs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
