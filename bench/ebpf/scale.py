"""bench/ebpf/scale.py: the whole agent with ``[[ingest.ebpf]]`` against many concurrent flows.

Issue 14's workloads: ``flowgen`` (``bench/ebpf/flowgen.c``) sends raw UDP frames (IPv4; with
``--ipv6`` odd flows are IPv6) of ``--flows`` distinct flows, ``--per-flow`` packets each,
``--concurrent`` flows at once, from a client namespace through a router namespace; the agent
observes the router's ingress (TCX) and exports NetFlow v9 to a UDP socket read in this
process. Printed per run: packets sent, dropped by the kernel before the hook (``rx
dropped``), the agent's final totals (traffic, dropped), the balance ``sent - before_hook -
traffic - dropped``, which must be 0, the datagrams the collector socket received, its drops,
and the records the exporter lost.

``--ingest nflog`` runs the same workload through ``[[ingest.nflog]]`` instead (the agent's
own nftables rule in the router's forward chain, its defaults otherwise), for comparison.

Run as root: ``python3 bench/ebpf/scale.py [--runs 3] [--flows 200000 --per-flow 3
--concurrent 100000] [--maxflows 0] [--rate-limit 3000] [--ingest ebpf|nflog] [--ipv6]``.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.agentproc import Agent  # noqa: E402
from tests.support.collectors import udp_drops  # noqa: E402
from tests.support.flowgen import Flood, build, rx_dropped  # noqa: E402
from tests.support.netns import Endpoint, routed_topology  # noqa: E402

SUMMARY = re.compile(r"traffic (\d+) packets.*dropped (\d+) packets")


class Collector:
    """A UDP socket with a 64 MB buffer that counts datagrams (a fast collector)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.datagrams = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sock.recv(65535)
            except TimeoutError:
                continue
            self.datagrams += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


READY = {"ebpf": "attached", "nflog": "reading NFLOG group"}


def ingest_config(args: argparse.Namespace, router_in: Endpoint) -> str:
    """The ``[[ingest.*]]`` table observing the router's ingress (eBPF) / forward (NFLOG)."""
    if args.ingest == "nflog":
        return (f'[[ingest.nflog]]\ngroup = 7\nnetns = "{router_in.ns.name}"\n'
                'manage_rules = true\nchains = ["forward"]\nfamilies = ["ipv4", "ipv6"]\n')
    maxflows = f"maxflows = {args.maxflows}\n" if args.maxflows else ""
    return (f'[[ingest.ebpf]]\ninterfaces = ["{router_in.ifname}"]\n'
            f'netns = "{router_in.ns.name}"\ndirection = "ingress"\n{maxflows}')


def one_run(args: argparse.Namespace, flowgen: str, work: Path) -> str:
    flood = Flood(args.flows, args.per_flow, args.concurrent)
    collector = Collector()
    try:
        with routed_topology() as t:
            router_in = t.router_client
            conf = work / "agent.toml"
            conf.write_text(f"""
[agent]
control_socket = ""
[cache]
inactive_timeout = 15
{ingest_config(args, router_in)}
[[export.netflow]]
destination = ["127.0.0.1:{collector.port}"]
protocol = 9
rate_limit = {args.rate_limit}
""")
            log = work / "agent.log"
            before = rx_dropped(router_in)
            agent = Agent(conf, log_path=log).start(ready=READY[args.ingest])
            t0 = time.monotonic()
            sent = flood.send(flowgen, t.client, router_in.mac, t.server.addr,
                              t.server.addr6 if args.ipv6 else "")
            seconds = time.monotonic() - t0
            agent.stop(timeout=120)
            before_hook = rx_dropped(router_in) - before
        text = log.read_text()
        traffic, dropped = map(int, SUMMARY.search(text).groups())  # type: ignore[union-attr]
        size = re.search(r"loaded BPF programs .*?maxflows (\d+)", text)
        lost = re.search(r"datagrams sent, (\d+) records lost", text)
        time.sleep(0.5)
        return (f"| {sent} | {sent / seconds / 1000:.0f} | {before_hook} | {traffic} | {dropped} "
                f"| {sent - before_hook - traffic - dropped} | {size.group(1) if size else '?'} "
                f"| {collector.datagrams} | {udp_drops(collector.port)} "
                f"| {lost.group(1) if lost else '?'} |")
    finally:
        collector.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--flows", type=int, default=200_000)
    ap.add_argument("--per-flow", type=int, default=3)
    ap.add_argument("--concurrent", type=int, default=100_000)
    ap.add_argument("--maxflows", type=int, default=0, help="kernel table (0 = derived)")
    ap.add_argument("--rate-limit", type=int, default=3000, help="export datagrams/s")
    ap.add_argument("--ingest", choices=sorted(READY), default="ebpf")
    ap.add_argument("--ipv6", action="store_true", help="odd flows are IPv6")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        flowgen = build(Path(tmp))
        print("| sent | kpps | before hook | traffic | dropped | balance | kernel maxflows "
              "| datagrams | collector drops | export lost records |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for _ in range(args.runs):
            print(one_run(args, flowgen, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
