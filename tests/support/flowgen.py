"""Floods of many distinct flows with exact ground truth (``bench/ebpf/flowgen.c``).

``flowgen`` sends raw Ethernet frames from one namespace: flow ``f`` comes from
``10.128.0.0 + f`` (IPv6: ``fd00:80::f``, the odd flows when an IPv6 destination is given),
source port ``1024 + f % 50000``; it has ``per_flow`` packets, or with ``per_flow_max`` between
``per_flow`` and ``per_flow_max`` (``per_flow + (f // 6) % span``). Plain floods are UDP to
``dst`` port 7000; ``mix=True`` makes flow ``f`` UDP, TCP or ICMP echo by ``(f // 2) % 3``, to
``dst + (f // 2) % 4096`` (IPv6: added to the last 32 bits) and port ``PORTS[(f // 18) % 8]``.
Flows go in windows of ``concurrent``, one packet of every flow of the window per round. So the
truth of a run is known without capturing anything: :meth:`Flood.truth`, also for a flood cut
short by its time bound (the schedule's first ``sent`` packets). Used by the eBPF scale tests
and benchmarks (bench/ebpf/scale.py, bench/compare/run.py); every flood is bounded in packets
and seconds.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.agentproc import Agent
from tests.support.netns import Endpoint, RoutedTopology
from tests.support.truth import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    FlowId,
    ip_text,
    record_table,
)

SOURCE = Path(__file__).resolve().parents[2] / "bench" / "ebpf" / "flowgen.c"
FIRST_SOURCE = int(ipaddress.IPv4Address("10.128.0.0"))
FIRST_SOURCE6 = int(ipaddress.IPv6Address("fd00:80::"))
DPORT = 7000
#: destination ports of a mixed flood's UDP and TCP flows (flowgen.c PORTS)
PORTS = (53, 80, 123, 443, 993, 5060, 8080, 51820)
#: destinations of a mixed flood: this many consecutive addresses from the given one
DESTINATIONS = 4096
_L4 = {PROTO_UDP: 8, PROTO_TCP: 20, PROTO_ICMP: 8}


def build(directory: Path) -> str:
    """Compile ``flowgen.c`` into ``directory``; the executable's path."""
    out = directory / "flowgen"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(out), str(SOURCE)], check=True)
    return str(out)


@dataclass(frozen=True)
class Flood:
    """One flowgen run's shape: ``flows`` flows of ``per_flow`` (up to ``per_flow_max``)
    packets, ``concurrent`` at once; ``mix``: UDP/TCP/ICMP to varied destinations."""

    flows: int
    per_flow: int
    concurrent: int
    payload: int = 18
    per_flow_max: int = 0  # 0: every flow has per_flow packets
    mix: bool = False

    @property
    def _span(self) -> int:
        return max(self.per_flow_max, self.per_flow) - self.per_flow + 1

    def packets_of(self, f: int) -> int:
        """Packets of flow ``f`` in the whole flood."""
        return self.per_flow + (f // 6) % self._span

    @property
    def packets(self) -> int:
        if self._span == 1:
            return self.flows * self.per_flow
        return sum(self.packets_of(f) for f in range(self.flows))

    def send(self, flowgen: str, src: Endpoint, dst_mac: str, dst_ip: str, dst_ip6: str = "",
             seconds: float = 60) -> int:
        """Send the flood from ``src`` (its namespace and interface) to ``dst_mac``/``dst_ip``
        (and ``dst_ip6`` for odd flows, if given); the number of packets sent (all of them
        unless ``seconds`` ran out)."""
        return self.send_timed(flowgen, src, dst_mac, dst_ip, dst_ip6, seconds)[0]

    def send_timed(self, flowgen: str, src: Endpoint, dst_mac: str, dst_ip: str,
                   dst_ip6: str = "", seconds: float = 60) -> tuple[int, float]:
        """:meth:`send`, also returning the sender's own elapsed seconds."""
        per_flow = (f"{self.per_flow}-{self.per_flow_max}" if self._span > 1
                    else str(self.per_flow))
        shape = [dst_ip6 or "-", "mix"] if self.mix else [dst_ip6] if dst_ip6 else []
        out = src.ns.run([flowgen, src.ifname, dst_mac, src.mac, dst_ip, str(self.flows),
                          per_flow, str(self.concurrent), str(self.payload), str(seconds),
                          *shape], timeout=seconds + 30).stdout.split()
        return int(out[0]), float(out[1])

    def flow_id(self, f: int, dst_ip: str, dst_ip6: str = "") -> tuple[FlowId, int]:
        """Flow ``f``'s id and the IP bytes of each of its packets."""
        v6 = bool(dst_ip6) and f % 2 == 1
        proto = (PROTO_UDP, PROTO_TCP, PROTO_ICMP)[(f // 2) % 3] if self.mix else PROTO_UDP
        off = (f // 2) % DESTINATIONS if self.mix else 0
        size = (40 if v6 else 20) + _L4[proto] + self.payload
        width = 16 if v6 else 4  # addresses printed from bytes: truth() prints a million
        src = ip_text((FIRST_SOURCE6 + f if v6 else FIRST_SOURCE + f).to_bytes(width, "big"))
        dst = ip_text((_address_int(dst_ip6 if v6 else dst_ip) + off).to_bytes(width, "big"))
        if proto == PROTO_ICMP:  # echo request: type << 8 | code as the destination port
            return FlowId(6 if v6 else 4, PROTO_ICMPV6 if v6 else PROTO_ICMP, src, dst, 0,
                          (128 if v6 else 8) << 8), size
        dport = PORTS[(f // 18) % len(PORTS)] if self.mix else DPORT
        return FlowId(6 if v6 else 4, proto, src, dst, 1024 + f % 50000, dport), size

    def sent_per_flow(self, sent: int | None = None) -> list[int]:
        """Packets of each flow among the schedule's first ``sent`` (default: all)."""
        left = self.packets if sent is None else sent
        counts = [0] * self.flows
        for first in range(0, self.flows, self.concurrent):
            window = range(first, min(first + self.concurrent, self.flows))
            whole = sum(self.packets_of(f) for f in window)
            if left >= whole:
                for f in window:
                    counts[f] = self.packets_of(f)
                left -= whole
                continue
            for r in range(self.per_flow + self._span - 1):  # the rounds, in order
                members = [f for f in window if self.packets_of(f) > r][:left]
                for f in members:
                    counts[f] += 1
                left -= len(members)
            break
        return counts

    def truth(self, dst_ip: str, dst_ip6: str = "",
              sent: int | None = None) -> dict[FlowId, tuple[int, int]]:
        """``FlowId -> (packets, bytes)`` of the flood (as sent with ``dst_ip6``), of its first
        ``sent`` packets when given; flows with no packet sent are left out."""
        out = {}
        for f, n in enumerate(self.sent_per_flow(sent)):
            if n:
                fid, size = self.flow_id(f, dst_ip, dst_ip6)
                out[fid] = (n, n * size)
        return out


@functools.lru_cache(maxsize=64)
def _address_int(text: str) -> int:
    return int(ipaddress.ip_address(text))


def rx_dropped(end: Endpoint) -> int:
    """Packets the kernel dropped on ``end``'s receive path before any hook saw them (backlog
    full, ...): ``ip -s link`` rx dropped."""
    out = end.ns.run(["ip", "-s", "-j", "link", "show", end.ifname]).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["dropped"])


#: counts what the router forwards, so a stop waits for the kernel rather than for the reader
_FORWARD_COUNTER = ("table inet nfaflood {\n  chain seen {\n"
                    "    type filter hook forward priority -500; policy accept;\n"
                    "    counter\n  }\n}\n")


def wait_forwarded(router_in: Endpoint, expected: int, timeout: float = 20.0) -> None:
    """Wait until the router's forward path has seen ``expected`` packets (at most
    ``timeout``): on a loaded machine the last frames of a flood can still sit in the
    kernel's backlog when the sender returns; an agent stopped then (its rule or program
    removed) would never see them, which is the end of its observation, not a loss. The
    agent's own reader is still as far behind as before: only the kernel is waited for."""
    deadline = time.monotonic() + timeout
    while _forwarded(router_in) < expected and time.monotonic() < deadline:
        time.sleep(0.02)


def _forwarded(router_in: Endpoint) -> int:
    out = router_in.ns.run(["nft", "-j", "list", "chain", "inet", "nfaflood", "seen"]).stdout
    rules = [item["rule"] for item in json.loads(out)["nftables"] if "rule" in item]
    return sum(expr["counter"]["packets"] for rule in rules for expr in rule["expr"]
               if "counter" in expr)


#: the agent's last log line: "... traffic N packets, B bytes; dropped M packets ..."
_SUMMARY = re.compile(r"stopped; .*traffic (\d+) packets.*dropped (\d+) packets")


@dataclass
class AgentRun:
    """What a whole agent made of a flood (:func:`agent_through_flood`).

    :ivar sent: packets the sender's device accepted.
    :ivar before_hook: packets the router's interface dropped before any hook (``rx dropped``).
    :ivar traffic: packets the agent accounted (its final summary).
    :ivar dropped: packets the agent counted as lost.
    :ivar table: ``FlowId -> (packets, bytes)`` of the exported records.
    :ivar log: the agent's log.
    """

    sent: int
    before_hook: int
    traffic: int
    dropped: int
    table: dict[FlowId, tuple[int, int]]
    log: str


def agent_through_flood(routed: RoutedTopology, flowgen: str, flood: Flood, ingest: str,
                        ready: str, tmp_path: Path) -> AgentRun:
    """Start an agent with ``ingest`` (a ``[[ingest.*]]`` table) and a JSON log exporter, send
    ``flood`` client -> server through the router, stop the agent as soon as the router has
    forwarded it (:func:`wait_forwarded`), and collect its totals and exported records."""
    router_in = routed.router_client
    out = tmp_path / "flows.jsonl"
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[agent]\ncontrol_socket = ""\n[cache]\ninactive_timeout = 60\n{ingest}\n'
                    f'[[export.log]]\npath = "{out}"\nformat = "json"\n')
    log = tmp_path / "agent.log"
    dropped_before = rx_dropped(router_in)
    router_in.ns.run(["nft", "-f", "-"], input=_FORWARD_COUNTER)
    agent = Agent(conf, log_path=log).start(ready=ready)
    try:
        sent = flood.send(flowgen, routed.client, router_in.mac, routed.server.addr,
                          routed.server.addr6)
        wait_forwarded(router_in, sent - (rx_dropped(router_in) - dropped_before))
    finally:
        assert agent.stop(timeout=180) == 0, agent.log()
        router_in.ns.run(["nft", "delete", "table", "inet", "nfaflood"])
    text = log.read_text()
    totals = _SUMMARY.search(text)
    assert totals, text
    records = (json.loads(line) for line in out.read_text().splitlines())
    table = record_table(r for r in records if r.get("type") == "flow")
    traffic, dropped = map(int, totals.groups())
    return AgentRun(sent, rx_dropped(router_in) - dropped_before, traffic, dropped, table, text)
