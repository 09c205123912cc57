"""What the core's hook dispatch costs: one stage call, the cache workload, one scan.

Usage: ``python bench/cache/bench_dispatch.py [--runs 5]``

* dispatch: 100,000 empty NAT event batches through ``Pipeline.dispatch`` (inbox item ->
  ``agent_export_nat_events`` on one exporter that keeps them): the core's cost per stage call;
* packets: the workload of ``bench_cache.py`` (1,000,000 packets over 100,000 flows, batches
  of 1024) handed to ``Pipeline.dispatch`` as an ingest's batches are (inbox item -> pluggy ->
  hook runner -> ``FlowCache``), side by side with the same batches given to
  ``FlowCache.agent_cache_packets`` directly in the same run; the difference per batch is
  what the dispatch costs;
* scan: the 100,000 flows expired, aggregated (``[aggregate]``, no rules) and exported to an
  exporter that keeps the records (``[[export.collect]]``), through ``Pipeline.scan``.

Uses only ``agent.testing.build_agent`` and ``Pipeline.dispatch``/``scan``, so the same file
measures an older checkout too (copy it there). Prints the best of the runs: on a shared
machine the best run is the one least disturbed by other load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
if not any(Path(p, "agent", "__init__.py").exists() for p in sys.path if p):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench_cache import PACKETS, workload  # noqa: E402

from netflow_agent.model import PacketBatch  # noqa: E402
from netflow_agent.stages.cache import CacheConfig, FlowCache  # noqa: E402
from netflow_agent.testing import build_agent, collecting_plugin_module  # noqa: E402

CONFIG = "[cache]\nmaxflows = 0\n[[ingest.fake]]\n[[export.collect]]\n"
CALLS = 100_000


def direct(batches: list) -> float:
    """Packets per second into a bare ``FlowCache``."""
    cache = FlowCache(CacheConfig(maxflows=0))
    t = time.perf_counter()
    for b in batches:
        cache.agent_cache_packets(batch=PacketBatch("ingest.fake[0]", b), now_ns=0)
    return PACKETS / (time.perf_counter() - t)


def through_pipeline(batches: list) -> tuple[float, float, float, int]:
    """Microseconds per stage call; packets per second through ``Pipeline.dispatch``; then
    records per second of one forced scan, and how many records it exported."""
    with tempfile.TemporaryDirectory() as tmp:
        agent = build_agent(CONFIG, Path(tmp), [collecting_plugin_module])
        pipeline = agent.pipeline
        t = time.perf_counter()
        for _ in range(CALLS):
            pipeline.dispatch("nat", [])
        call_us = (time.perf_counter() - t) / CALLS * 1e6
        t = time.perf_counter()
        for b in batches:
            pipeline.dispatch("packets", PacketBatch("ingest.fake[0]", b))
        pps = PACKETS / (time.perf_counter() - t)
        t = time.perf_counter()
        pipeline.scan(batches[-1][-1][3] + 1, force=True)
        elapsed = time.perf_counter() - t
        exported = len(agent["export.collect[0]"].flows)
        pipeline.stop_started()
    return call_us, pps, exported / elapsed, exported


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    batches = workload()
    calls, bare, piped, scans = [], [], [], []
    exported = 0
    for _ in range(args.runs):
        bare.append(direct(batches))
        call_us, pps, rps, exported = through_pipeline(batches)
        calls.append(call_us)
        piped.append(pps)
        scans.append(rps)
    print(f"dispatch   {min(calls):.2f} us per stage call (one implementation; median "
          f"{statistics.median(calls):.2f})   (runs={args.runs}, best)")
    print(f"packets/s  direct {max(bare):,.0f}   through Pipeline.dispatch {max(piped):,.0f}   "
          f"ratio {max(piped) / max(bare):.3f}")
    print(f"scan       {max(scans):,.0f} records/s expired, aggregated and exported "
          f"({exported} records)")


if __name__ == "__main__":
    main()
