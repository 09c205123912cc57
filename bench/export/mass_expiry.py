"""bench/export/mass_expiry.py: CPU, page faults and context switches per flow of exporting
a W3-like table, in timed scans (a mass expiry) or at the stop.

Issue 14's W3 (``bench/compare/run.py --workload w3``) ends with a million flows in the
table; they leave either in the timed scans of the agent's 15 s inactive timeout, spread
over scans by the paced backlog's room (when the harness waits long enough), or at SIGTERM
in the stop's forced scan. This bench does either in one process, without ingests: a v9
``[[export.netflow]]`` at its defaults (paced, 3,000 datagrams/s) to a reader process on
loopback, the default cache filled with ``--flows`` flows shaped like W3's (half IPv6, a
third each UDP, TCP and ICMP, 1-3 packets, last seen over 10 s). ``--mode timed`` runs a
timed scan every second (real time: the paced backlog's room limits each) until the table
is empty, then the stop; ``--mode stop`` runs the stop at once.

Printed per mode, medians of ``--runs``: CPU µs per flow (``getrusage``, every thread:
user + system), minor page faults and voluntary context switches per 1,000 flows, and the
records lost (must be 0). ``--perf FILE`` / ``--strace FILE`` attach ``perf record -g`` /
``strace -c -f`` to the first run's export.

Run: ``python3 bench/export/mass_expiry.py [--flows 1000000] [--mode timed stop] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from netflow_agent import heap  # noqa: E402
from netflow_agent.model import FlowBatch  # noqa: E402
from netflow_agent.schema import active  # noqa: E402
from netflow_agent.stages.cache import FlowCache  # noqa: E402
from netflow_agent.testing import fill_cache, v9_export_agent  # noqa: E402

S = 1_000_000_000


def reader() -> tuple[int, int]:
    """A child process reading every datagram on a fresh loopback port (64 MB buffer, as
    nfcapd in bench/compare) until killed; ``(pid, port)``."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    rx.bind(("127.0.0.1", 0))
    pid = os.fork()
    if pid == 0:
        while True:
            rx.recv(65536)
    port = rx.getsockname()[1]
    rx.close()
    return pid, port


def w3_flows(n: int, now_ns: int) -> FlowBatch:
    """``n`` distinct flows shaped like W3's: IPv4 and IPv6 by turns, UDP/TCP/ICMP(v6) by
    thirds, 4,096 destinations, 1-3 packets; flow i seen at ``now_ns - 16 s + i * 10 s / n``
    (a 10 s flood that ended 6 s ago: idle from 1 s before ``now_ns`` to 9 s after)."""
    flows = active().empty(n)
    i = np.arange(n)
    v6 = (i % 2) == 1
    proto = np.array([17, 6, 1])[i % 3]
    proto = np.where(v6 & (proto == 1), 58, proto)
    flows["ip_version"] = np.where(v6, 6, 4)
    flows["protocol"] = proto
    flows["in_if"] = 2
    src = np.zeros((n, 16), np.uint8)
    src[:, :4] = np.frombuffer((0x0A000000 + i).astype(">u4").tobytes(), np.uint8).reshape(n, 4)
    src[v6, 4:8] = src[v6, :4]
    src[v6, :4] = [0xFD, 0, 0, 0]
    dst = np.zeros((n, 16), np.uint8)
    dst[:, 0], dst[:, 2], dst[:, 3] = 192, (i % 4096) >> 8, (i % 4096) & 0xFF
    flows["src_addr"] = src.view("V16").ravel()
    flows["dst_addr"] = dst.view("V16").ravel()
    icmp = (proto == 1) | (proto == 58)
    flows["src_port"] = np.where(icmp, 0, 1024 + i % 50000)
    flows["dst_port"] = np.where(icmp, 0x0800, 80 + i % 8)
    flows["packets"] = 1 + i % 3
    flows["octets"] = flows["packets"] * 100
    flows["start_ns"] = now_ns - 16 * S + i * (10 * S // n)
    flows["end_ns"] = flows["start_ns"] + 1000
    flows["tcp_flags"] = np.where(proto == 6, 0x12, 0)
    return FlowBatch("ingest.fake[0]", flows)


def tools(perf: str, strace: str) -> list[subprocess.Popen]:
    """``perf record`` / ``strace -c`` attached to this process (waited for to attach)."""
    pid, out = str(os.getpid()), []
    if perf:
        out.append(subprocess.Popen(["perf", "record", "-F", "2999", "-g", "-p", pid, "-o",
                                     perf], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL))
    if strace:
        out.append(subprocess.Popen(["strace", "-c", "-f", "-p", pid, "-o", strace]))
    if out:
        time.sleep(1.5)
    return out


def one_run(flows: int, mode: str, perf: str = "", strace: str = "") -> dict[str, float]:
    """Fill, export (timed scans then the stop, or the stop) and count."""
    pid, port = reader()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            agent = v9_export_agent(port, Path(tmp))
            pipeline = agent.pipeline
            start = time.time_ns()
            fill_cache(agent, w3_flows(flows, start), 16_384)
            caches = [c for c in pipeline.components.values() if isinstance(c, FlowCache)]
            attached = tools(perf, strace)
            before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            if mode == "timed":  # the clock runs from the fill on, a scan a second
                while sum(c.active_flows for c in caches):
                    now = start + int((time.monotonic() - t0) * S)
                    pipeline.scan(now)
                    time.sleep(max(0.0, 1 - (time.monotonic() - t0 - (now - start) / S)))
            pipeline.shutdown()
            after = resource.getrusage(resource.RUSAGE_SELF)
            for tool in attached:
                tool.send_signal(signal.SIGINT)
                tool.wait()
            stats = pipeline.components["export.netflow[0]"].agent_collect_stats()
            exported = pipeline.loop.exported_flows
    finally:
        time.sleep(0.5)  # the reader's last datagrams
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"us_per_flow": cpu / exported * 1e6,
            "faults_per_1k": (after.ru_minflt - before.ru_minflt) / exported * 1e3,
            "cswitch_per_1k": (after.ru_nvcsw - before.ru_nvcsw) / exported * 1e3,
            "lost": float(stats.get("lost_records", 0)), "datagrams": float(stats["pdus"]),
            "exported": float(exported)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--mode", nargs="+", choices=["timed", "stop"], default=["timed", "stop"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--perf", default="", help="perf record of the first run's export")
    ap.add_argument("--strace", default="", help="strace -c of the first run's export")
    args = ap.parse_args()
    heap.pin()  # glibc's heap as the agent sets it (agent/heap.py)
    print(f"{args.flows:,} W3-like flows, medians of {args.runs}\n"
          "| mode | CPU µs per flow | page faults per 1k flows | voluntary context switches "
          "per 1k flows | datagrams | records lost |\n|---|---|---|---|---|---|")
    for mode in args.mode:
        runs = [one_run(args.flows, mode, *((args.perf, args.strace) if i == 0 else ("", "")))
                for i in range(args.runs)]
        for r in runs:
            print(f"<!-- {mode} run: {r} -->", file=sys.stderr)
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        spread = ", ".join(f"{r['us_per_flow']:.3f}" for r in runs)
        print(f"| {mode} | {med['us_per_flow']:.3f} ({spread}) | {med['faults_per_1k']:.1f} | "
              f"{med['cswitch_per_1k']:.2f} | {med['datagrams']:.0f} | "
              f"{max(r['lost'] for r in runs):.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
