"""Records per second encoded and sent by ``[[export.ipfix]]`` over UDP, NetFlow v9 as peer.

What it measures, on one core (the pipeline thread does this work), for the same records in
the same run:

* ``ipfix encode``: the pure encoder alone (``encode_flow_groups`` + ``encode_messages``);
* ``ipfix encode+send``: the component's ``agent_export_flows`` hook, unpaced: encoding plus
  the part's messages handed to the destination at once (one ``sendmmsg``, as v9) to a bound
  UDP socket on 127.0.0.1 that never reads (the receiver drops; the sender still pays the
  full syscall and loopback path);
* ``v9 encode+send``: ``[[export.netflow]] protocol = 9`` on the same records, side by side
  (IPFIX carries 64-bit counters and millisecond timestamps, so its records are larger).

Records: 200,000 distinct flows (10 % IPv6, a third UDP), in batches of 4,096 as the cache
expires them. Each figure is the median of ``--runs`` runs with min and max, plus the CPU time
(``time.process_time``) per run, to show it is one core's work.
Usage: ``python3 bench/export_ipfix/bench_ipfix.py [--records 200000] [--runs 7]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
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
from netflow_agent.model import END_IDLE, FlowRecord  # noqa: E402
from netflow_agent.plugins.export_ipfix.component import IpfixExporter  # noqa: E402
from netflow_agent.plugins.export_ipfix.config import Config  # noqa: E402
from netflow_agent.plugins.export_ipfix.ipfix import Session, encode_flow_groups, encode_messages  # noqa: E402
from netflow_agent.runtime import RunContext  # noqa: E402


def time_encode(parts: list[Any]) -> tuple[float, float]:
    session = Session(1, 20, 600_000_000_000)

    def fail(record: FlowRecord, exc: Exception) -> None:
        raise exc

    t0, c0 = time.perf_counter(), time.process_time()
    for part in parts:
        encode_messages(session, encode_flow_groups(part, fail), export_time=int(time.time()),
                        max_length=1472, now_ns=time.monotonic_ns())
    return time.perf_counter() - t0, time.process_time() - c0


def time_ipfix_export(parts: list[Any], endpoint: str) -> tuple[float, float]:
    exporter = IpfixExporter(Config(destination=[endpoint], sndbuf=4 * 1024 * 1024,
                                    options_interval_s=0, rate_limit=0),  # unpaced: encode+send
                             "export.ipfix[0]")
    exporter.agent_start(context=RunContext())
    t0, c0 = time.perf_counter(), time.process_time()
    for part in parts:
        exporter.agent_export_flows(records=part)
    elapsed = time.perf_counter() - t0, time.process_time() - c0
    stats = exporter.agent_collect_stats()
    exporter.agent_stop()
    assert stats["lost_records"] == 0, stats
    return elapsed


def time_v9_export(parts: list[Any], endpoint: str) -> tuple[float, float]:
    from netflow_agent.plugins.export_netflow.component import NetflowExporter
    from netflow_agent.plugins.export_netflow.config import Config as NetflowConfig

    exporter = NetflowExporter(NetflowConfig(destination=[endpoint], protocol=9,
                                             sndbuf=4 * 1024 * 1024, rate_limit=0),
                               "export.netflow[0]")
    exporter.agent_start(context=RunContext())
    t0, c0 = time.perf_counter(), time.process_time()
    for part in parts:
        exporter.agent_export_flows(records=part)
    elapsed = time.perf_counter() - t0, time.process_time() - c0
    exporter.agent_stop()
    return elapsed


def report(label: str, n: int, runs: int, fn: Callable[[], tuple[float, float]]) -> None:
    results = [fn() for _ in range(runs)]
    rates = [n / wall for wall, _ in results]
    cpu_share = statistics.median(cpu / wall for wall, cpu in results)
    cpu_us = statistics.median(cpu for _, cpu in results) / n * 1e6
    print(f"  {label:18s} {statistics.median(rates):>12,.0f} rec/s "
          f"[{min(rates):,.0f}-{max(rates):,.0f}]  cpu/wall {cpu_share:.2f}  "
          f"{cpu_us:.3f} µs/rec CPU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    parts = handover(make_records(args.records, time.time_ns(), end_reason=END_IDLE))
    print(f"{args.records} records (10 % IPv6) as {input_kind()}, batches of {BATCH}, "
          f"{args.runs} runs, median [min-max]")
    n = args.records
    with discard_sink() as endpoint:
        report("ipfix encode", n, args.runs, lambda: time_encode(parts()))
        report("ipfix encode+send", n, args.runs, lambda: time_ipfix_export(parts(), endpoint))
        report("v9 encode+send", n, args.runs, lambda: time_v9_export(parts(), endpoint))


if __name__ == "__main__":
    main()
