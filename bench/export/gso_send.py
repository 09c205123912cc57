"""bench/export/gso_send.py: CPU per datagram of the UDP sender alone, with and without GSO.

The datagrams are the v9 exporter's own: ``--records`` records (:func:`bench.export.workload.
make_records`) exported once by ``[[export.netflow]]`` (unpaced) while a bench-only patch of
``agent.transport.udp.send_burst`` keeps a copy of every datagram. Then
:func:`netflow_agent._udpsend.send_burst` sends them all again, in bursts of ``--burst``
datagrams (0: one call for all, as an unpaced export part; 22: a paced burst at the default
wake-up), with ``gso_max`` 0 (plain sendmmsg) and the socket's GSO limit alternately, to a
collector process reading every datagram (:func:`bench.export.final_export.collector`).

Printed, medians of ``--runs``: CPU µs per datagram and per record (``time.process_time``; on
loopback it includes the collector's receive path, run by the sender's ``send``), the
messages the sends need (datagrams, or GSO runs and single datagrams).

Run: ``python3 bench/export/gso_send.py [--records 200000] [--burst 0 22] [--runs 5]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.export.final_export import collector  # noqa: E402
from bench.export.workload import make_records  # noqa: E402
from netflow_agent._udpsend import GSO_BYTES, GSO_SEGMENTS, send_burst  # noqa: E402
from netflow_agent.model import FlowBatch  # noqa: E402
from netflow_agent.plugins.export_netflow.component import NetflowExporter  # noqa: E402
from netflow_agent.plugins.export_netflow.config import Config  # noqa: E402
from netflow_agent.runtime import RunContext  # noqa: E402
from netflow_agent.transport import udp  # noqa: E402


def exported_datagrams(records: int) -> list[bytes]:
    """Every datagram the v9 exporter sends for ``records`` records, in order."""
    kept: list[bytes] = []
    real = udp.send_burst

    def keep(fd: int, datagrams: list[bytes], start: int, count: int, gso_max: int = 0):
        kept.extend(bytes(d) for d in datagrams[start:start + count])
        return real(fd, datagrams, start, count, gso_max)

    batch = FlowBatch.from_records(make_records(records, time.time_ns()), "cache")
    pid, port = collector()
    udp.send_burst = keep  # type: ignore[assignment]
    try:
        exporter = NetflowExporter(Config(destination=[f"127.0.0.1:{port}"], protocol=9,
                                          rate_limit=0), "export.netflow[0]")
        exporter.agent_start(context=RunContext(start_ns=time.time_ns()))
        exporter.agent_export_flows(records=batch)
        exporter.agent_stop()
    finally:
        udp.send_burst = real  # type: ignore[assignment]
        os.waitpid(pid, 0)
    return kept


def gso_messages(datagrams: list[bytes], burst: int) -> int:
    """How many messages the C sender makes of ``datagrams`` in bursts of ``burst``: runs of
    equal sizes (a shorter last one joins), at most GSO_SEGMENTS and GSO_BYTES each."""
    step = burst or len(datagrams)
    messages = 0
    for at in range(0, len(datagrams), step):
        sizes = [len(d) for d in datagrams[at:at + step]]
        i = 0
        while i < len(sizes):
            n, total = 1, sizes[i]
            while (i + n < len(sizes) and n < GSO_SEGMENTS and sizes[i + n] <= sizes[i]
                   and total + sizes[i + n] <= GSO_BYTES):
                total += sizes[i + n]
                n += 1
                if sizes[i + n - 1] < sizes[i]:
                    break
            messages += 1
            i += n
    return messages


def one_run(datagrams: list[bytes], burst: int, gso: bool) -> float:
    """CPU µs per datagram sending them all (the kernel took every one)."""
    pid, port = collector()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(("127.0.0.1", port))
    gso_max = udp.UdpDestination._gso_limit(tx) if gso else 0
    step = burst or len(datagrams)
    t0 = time.process_time()
    for at in range(0, len(datagrams), step):
        sent, err, _ = send_burst(tx.fileno(), datagrams, at, min(step, len(datagrams) - at),
                                  gso_max)
        assert (sent, err) == (min(step, len(datagrams) - at), 0), (sent, err)
    cpu = time.process_time() - t0
    tx.close()
    os.waitpid(pid, 0)
    return cpu / len(datagrams) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--burst", type=int, nargs="+", default=[0, 22])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    datagrams = exported_datagrams(args.records)
    per = args.records / len(datagrams)
    runs: dict[tuple[int, bool], list[float]] = {
        k: [] for k in itertools.product(args.burst, (False, True))}
    for _ in range(args.runs):
        for key in runs:  # interleaved: the machine's load hits all alike
            runs[key].append(one_run(datagrams, *key))
    print(f"{len(datagrams):,} v9 datagrams ({per:.1f} records each), medians of {args.runs}")
    print("| burst | GSO | messages | CPU µs per datagram | per record |\n|---|---|---|---|---|")
    for (burst, gso), res in runs.items():
        us = statistics.median(res)
        messages = gso_messages(datagrams, burst) if gso else len(datagrams)
        print(f"| {burst or 'all'} | {'on' if gso else 'off'} | {messages:,} | {us:.2f} "
              f"| {us / per:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
