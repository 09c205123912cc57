"""bench/export/pacing.py: a burst of expiring flows against a slow collector, paced or not.

``[[export.netflow]]`` (v9) sends ``--records`` flow records in one export to
:class:`tests.support.collectors.SlowCollector`: a 256 KiB receive buffer read by another
process at most 10 datagrams per 2 ms. Printed per ``rate_limit``: datagrams, time to encode
and queue, time ``agent_stop`` took to send the backlog, what the collector received and what
its socket dropped (``/proc/net/udp``), and the exporter's own ``lost_records``.

Run: ``python3 bench/export/pacing.py [--records 60000] [--rates 0 3000]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from netflow_agent.plugins.export_netflow.component import NetflowExporter  # noqa: E402
from netflow_agent.plugins.export_netflow.config import Config  # noqa: E402
from netflow_agent.runtime import RunContext  # noqa: E402
from tests.export_netflow.test_netflow_component import flows  # noqa: E402
from tests.support.collectors import SlowCollector  # noqa: E402


def one_run(rate: int, records: int) -> str:
    batch = flows(records)
    with SlowCollector() as collector:
        exporter = NetflowExporter(Config(destination=[f"127.0.0.1:{collector.port}"],
                                          protocol=9, rate_limit=rate), "export.netflow[0]")
        exporter.agent_start(context=RunContext(start_ns=time.time_ns()))
        t0 = time.monotonic()
        exporter.agent_export_flows(records=batch)
        t1 = time.monotonic()
        exporter.agent_stop()
        t2 = time.monotonic()
        stats = exporter.agent_collect_stats()
        received, dropped = collector.result()
    return (f"| {rate or 'unpaced'} | {stats['pdus']} | {t1 - t0:.2f} | {t2 - t1:.2f} | "
            f"{received} | {dropped} | {stats['lost_records']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=60_000)
    ap.add_argument("--rates", type=int, nargs="*", default=[0, 3000])
    args = ap.parse_args()
    print("| rate_limit | datagrams | encode+queue s | stop (backlog) s | collector received "
          "| dropped at its socket | exporter lost_records |")
    print("|---|---|---|---|---|---|---|")
    for rate in args.rates:
        print(one_run(rate, args.records), flush=True)


if __name__ == "__main__":
    main()
