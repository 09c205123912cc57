"""Records per second encoded and sent by ``[[export.netflow]]`` (NetFlow v5 and v9).

What it measures, on one core (the pipeline thread does this work):

* ``encode``: the pure encoder alone (records -> list[bytes]);
* ``encode+send``: the component's ``agent_export_flows`` hook, i.e. encoding plus one
  non-blocking ``send`` per datagram to a bound UDP socket on 127.0.0.1 that never reads
  (the receiver drops; the sender still pays the full syscall and loopback path).

Records are realistic IPv4/IPv6 mixes (90 % IPv4) handed over in batches, as the cache expires
them: ``FlowBatch`` objects (columns), or lists of ``FlowRecord`` when run against a version
of the agent that predates ``FlowBatch``. Each figure is the median of ``--runs`` runs
(default 7); min and max are shown to judge the noise, and the CPU time per record
(``time.process_time``, less sensitive to a busy machine than wall time).
Usage: ``python3 bench/export/bench_netflow.py [--records 200000] [--runs 7]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.export.workload import (  # noqa: E402
    BATCH,
    discard_sink,
    handover,
    input_kind,
    make_records,
)
from netflow_agent.plugins.export_netflow import v5, v9  # noqa: E402
from netflow_agent.plugins.export_netflow.component import NetflowExporter  # noqa: E402
from netflow_agent.plugins.export_netflow.config import Config  # noqa: E402
from netflow_agent.plugins.export_netflow.state import ExportState  # noqa: E402
from netflow_agent.runtime import RunContext  # noqa: E402

Timing = tuple[float, float]  # wall s, CPU s


def time_encode(protocol: int, parts: list[Any], now: int) -> Timing:
    state = ExportState(boot_ns=now - 60_000_000_000)
    templates, policy = v9.flow_templates(False), v9.RefreshPolicy()
    t0, c0 = time.perf_counter(), time.process_time()
    for part in parts:
        if protocol == 5:
            v5.encode_flows(part, state, now)
        else:
            v9.encode_flows(part, state, templates, policy, now)
    return time.perf_counter() - t0, time.process_time() - c0


def time_export(protocol: int, parts: list[Any], now: int, endpoint: str) -> Timing:
    exporter = NetflowExporter(Config(destination=[endpoint], protocol=protocol,
                                      sndbuf=4 * 1024 * 1024, rate_limit=0),  # encode + send
                               "export.netflow[0]")
    exporter.agent_start(context=RunContext(start_ns=now - 60_000_000_000))
    t0, c0 = time.perf_counter(), time.process_time()
    for part in parts:
        exporter.agent_export_flows(records=part)
    elapsed = time.perf_counter() - t0, time.process_time() - c0
    stats = exporter.agent_collect_stats()
    exporter.agent_stop()
    assert stats["sock_fail"] == 0, stats
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    now = time.time_ns()
    parts = handover(make_records(args.records, now))
    print(f"{args.records} records (10 % IPv6; v5 skips them) as {input_kind()}, batches of "
          f"{BATCH}, {args.runs} runs, records/s median [min-max], CPU µs per record median")
    with discard_sink() as endpoint:
        for protocol in (5, 9):
            runs = {"encode": lambda p=protocol: time_encode(p, parts(), now),
                    "encode+send": lambda p=protocol: time_export(p, parts(), now, endpoint)}
            for label, fn in runs.items():
                results = [fn() for _ in range(args.runs)]
                rates = [args.records / wall for wall, _ in results]
                cpu_us = statistics.median(cpu for _, cpu in results) / args.records * 1e6
                print(f"  v{protocol} {label:12s} {statistics.median(rates):>12,.0f} "
                      f"[{min(rates):,.0f}-{max(rates):,.0f}]  {cpu_us:.3f} µs/rec CPU")


if __name__ == "__main__":
    main()
