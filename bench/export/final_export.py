"""bench/export/final_export.py: CPU per record of a final export, paced and unpaced.

What the agent does at stop with every cached flow, minus the cache: ``--records`` v9 records
(:func:`bench.export.workload.make_records`, as a FlowBatch) handed to ``[[export.netflow]]``
in parts of ``agent.loop.EXPORT_ROWS``, as a forced scan does, with ``RunContext.stopping``
set, then ``agent_stop`` (which sends the backlog at the paced rate). The collector is another
process that reads every datagram from a 64 MB socket buffer, as nfcapd does in bench/compare
(on loopback the sender's ``send`` also runs the receiving side's UDP path, and wakes it).

Printed per ``rate_limit`` (0 = unpaced), medians of ``--runs``: CPU µs per record
(``time.process_time``: every thread of the process) while exporting (encoding and queueing;
unpaced: sending too) and during ``agent_stop`` (the paced backlog), records lost, and for the
paced runs the pacing thread's own CPU (ms, ``time.thread_time`` as it ends), its bursts
(one wake-up and one ``sendmmsg`` each, in the C loop of agent/_udpsend.c) and the rate it
achieved (datagrams per second after the first burst, from its first chunk to its last).

``--no-gso`` sends without UDP GSO (for an A/B of agent/_udpsend.c's GSO runs).

Run: ``python3 bench/export/final_export.py [--records 200000] [--rates 0 3000] [--runs 3]
[--no-gso]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.export.workload import make_records  # noqa: E402
from netflow_agent.loop import EXPORT_ROWS, export_parts  # noqa: E402
from netflow_agent.model import FlowBatch  # noqa: E402
from netflow_agent.plugins.export_netflow.component import NetflowExporter  # noqa: E402
from netflow_agent.plugins.export_netflow.config import Config  # noqa: E402
from netflow_agent.runtime import RunContext  # noqa: E402
from netflow_agent.transport.pacing import PacedSender  # noqa: E402
from netflow_agent.transport.udp import UdpDestination  # noqa: E402


def collector() -> tuple[int, int]:
    """A child process reading every datagram on a fresh loopback port until 3 s of silence;
    ``(pid, port)``."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    rx.bind(("127.0.0.1", 0))
    pid = os.fork()
    if pid == 0:  # the collector: read until quiet, then leave without cleanup
        rx.settimeout(3)
        try:
            while True:
                rx.recv(65536)
        except OSError:
            os._exit(0)
    port = rx.getsockname()[1]
    rx.close()
    return pid, port


class PacerWatch:
    """Wraps :class:`PacedSender`'s thread (a bench-only patch of its private ``_run``): the
    thread's CPU when it ends, its bursts (``PacedSender.bursts``), and the time and size of
    every chunk it hands to the destination's ``send_paced`` (the C loop's calls)."""

    def __init__(self) -> None:
        self.cpu_s = 0.0
        self.bursts = 0
        self.burst_size = 0
        self.calls: list[tuple[float, float, int]] = []  # (start, end, datagrams)
        self._run = PacedSender._run

    def __enter__(self) -> PacerWatch:
        watch, run = self, self._run

        def watched(pacer: PacedSender) -> None:
            send_paced = pacer._send_paced
            assert send_paced is not None  # UdpDestination paces in C

            def timed(datagrams: list[bytes], records: list[int], state: object) -> int:
                start = time.monotonic()
                done = send_paced(datagrams, records, state)  # type: ignore[arg-type]
                watch.calls.append((start, time.monotonic(), done))
                return done

            pacer._send_paced = timed
            try:
                run(pacer)
            finally:
                watch.cpu_s += time.thread_time()
                watch.bursts += pacer.bursts
                watch.burst_size = pacer._bucket.burst

        PacedSender._run = watched  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        PacedSender._run = self._run  # type: ignore[method-assign]

    def rate(self) -> float:
        """Datagrams per second after the first burst (the saved-up tokens), from the first
        chunk's start to the last one's end (0 without a span)."""
        if not self.calls:
            return 0.0
        span = self.calls[-1][1] - self.calls[0][0]
        sent = sum(n for _, _, n in self.calls) - self.burst_size
        return sent / span if span > 0 else 0.0


def one_run(batch: FlowBatch, rate: int) -> tuple[float, float, int, PacerWatch]:
    """CPU µs per record exporting and stopping, records lost, the pacing thread's figures."""
    pid, port = collector()
    watch = PacerWatch()
    try:
        context = RunContext(start_ns=time.time_ns())
        context.stopping = True  # the final export: puts wait for room in the backlog
        exporter = NetflowExporter(Config(destination=[f"127.0.0.1:{port}"], protocol=9,
                                          rate_limit=rate), "export.netflow[0]")
        with watch:
            exporter.agent_start(context=context)
            t0 = time.process_time()
            for part in export_parts(batch, EXPORT_ROWS):
                exporter.agent_export_flows(records=part)
            t1 = time.process_time()
            exporter.agent_stop()
            t2 = time.process_time()
        lost = int(exporter.agent_collect_stats().get("lost_records", 0))
    finally:
        os.waitpid(pid, 0)
    n = len(batch)
    return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6, lost, watch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--rates", type=int, nargs="+", default=[0, 3000])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-gso", action="store_true",
                    help="send without UDP GSO (UdpDestination.use_gso off), for A/B")
    args = ap.parse_args()
    UdpDestination.use_gso = not args.no_gso
    batch = FlowBatch.from_records(make_records(args.records, time.time_ns()), "cache")
    runs: dict[int, list[tuple[float, float, int, PacerWatch]]] = {r: [] for r in args.rates}
    for _ in range(args.runs):
        for rate in args.rates:  # interleaved: the machine's load hits both alike
            runs[rate].append(one_run(batch, rate))
    print(f"{args.records:,} records, medians of {args.runs}: CPU µs per record")
    print("| rate_limit | export | stop | total | records lost | pacing thread CPU ms "
          "| bursts | achieved rate/s |\n|---|---|---|---|---|---|---|---|")
    for rate, res in runs.items():
        exp, stop = (statistics.median(r[i] for r in res) for i in (0, 1))
        total = statistics.median(r[0] + r[1] for r in res)
        watches = [r[3] for r in res]
        pacer = (f"{statistics.median(w.cpu_s for w in watches) * 1e3:.1f} "
                 f"| {statistics.median(w.bursts for w in watches):.0f} "
                 f"| {statistics.median(w.rate() for w in watches):.0f}") if rate else "- | - | -"
        print(f"| {rate or 'unpaced'} | {exp:.3f} | {stop:.3f} | {total:.3f} "
              f"| {max(r[2] for r in res)} | {pacer} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
