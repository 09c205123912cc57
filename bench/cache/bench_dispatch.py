"""What the core's hook dispatch costs: the cache workload through the pipeline, and one scan.

Usage: ``python bench/cache/bench_dispatch.py [--runs 5]``

* packets: the workload of ``bench_cache.py`` (1,000,000 packets over 100,000 flows, batches
  of 1024) handed to ``Pipeline.dispatch`` as an ingest's batches are (inbox item -> pluggy ->
  hook runner -> ``FlowCache``), side by side with the same batches given to
  ``FlowCache.agent_cache_packets`` directly in the same run; the difference per batch is
  what the dispatch costs;
* scan: the 100,000 flows expired, aggregated (``[aggregate]``, no rules) and exported to an
  exporter that keeps the records (``[[export.collect]]``), through ``Pipeline.scan``.

Uses only ``agent.testing.build_agent`` and ``Pipeline.dispatch``/``scan``, so the same file
measures an older checkout too (``PYTHONPATH=<checkout> python bench_dispatch.py``).
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

from bench_cache import BATCH, PACKETS, workload  # noqa: E402

from agent.model import PacketBatch  # noqa: E402
from agent.stages.cache import CacheConfig, FlowCache  # noqa: E402
from agent.testing import build_agent, collecting_plugin_module  # noqa: E402

CONFIG = "[cache]\nmaxflows = 0\n[[ingest.fake]]\n[[export.collect]]\n"


def direct(batches: list) -> float:
    """Packets per second into a bare ``FlowCache``."""
    cache = FlowCache(CacheConfig(maxflows=0))
    t = time.perf_counter()
    for b in batches:
        cache.agent_cache_packets(batch=PacketBatch("ingest.fake[0]", b), now_ns=0)
    return PACKETS / (time.perf_counter() - t)


def through_pipeline(batches: list) -> tuple[float, float, int]:
    """Packets per second through ``Pipeline.dispatch``; then records per second of one
    forced scan, and how many records it exported."""
    with tempfile.TemporaryDirectory() as tmp:
        agent = build_agent(CONFIG, Path(tmp), [collecting_plugin_module])
        pipeline = agent.pipeline
        t = time.perf_counter()
        for b in batches:
            pipeline.dispatch("packets", PacketBatch("ingest.fake[0]", b))
        pps = PACKETS / (time.perf_counter() - t)
        t = time.perf_counter()
        pipeline.scan(batches[-1][-1][3] + 1, force=True)
        elapsed = time.perf_counter() - t
        exported = len(agent["export.collect[0]"].flows)
        pipeline.stop_started()
    return pps, exported / elapsed, exported


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    batches = workload()
    bare, piped, scans = [], [], []
    exported = 0
    for _ in range(args.runs):
        bare.append(direct(batches))
        pps, rps, exported = through_pipeline(batches)
        piped.append(pps)
        scans.append(rps)
    m_bare, m_piped = statistics.median(bare), statistics.median(piped)
    per_batch_us = (BATCH / m_piped - BATCH / m_bare) * 1e6
    print(f"packets/s  direct {m_bare:,.0f}   through Pipeline.dispatch {m_piped:,.0f}   "
          f"ratio {m_piped / m_bare:.3f}   dispatch {per_batch_us:.1f} us/batch of {BATCH}   "
          f"(runs={args.runs})")
    print(f"scan       {statistics.median(scans):,.0f} records/s expired, aggregated and "
          f"exported ({exported} records)")


if __name__ == "__main__":
    main()
