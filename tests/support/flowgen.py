"""Floods of many distinct flows with exact ground truth (``bench/ebpf/flowgen.c``).

``flowgen`` sends raw Ethernet frames from one namespace: flow ``f`` is
``10.128.0.0 + f -> dst``, UDP ``1024 + f % 50000 -> 7000``, every packet ``20 + 8 + payload`` IP
bytes, flows in windows of ``concurrent`` with ``per_flow`` rounds each. So the truth of a run
is known without capturing anything: :meth:`Flood.truth`. Used by the eBPF scale tests and
benchmarks; every flood is bounded in packets and seconds.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.netns import Endpoint
from tests.support.truth import PROTO_UDP, FlowId

SOURCE = Path(__file__).resolve().parents[2] / "bench" / "ebpf" / "flowgen.c"
FIRST_SOURCE = int(ipaddress.IPv4Address("10.128.0.0"))
DPORT = 7000


def build(directory: Path) -> str:
    """Compile ``flowgen.c`` into ``directory``; the executable's path."""
    out = directory / "flowgen"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(out), str(SOURCE)], check=True)
    return str(out)


@dataclass(frozen=True)
class Flood:
    """One flowgen run's shape: ``flows`` flows of ``per_flow`` packets, ``concurrent`` at once."""

    flows: int
    per_flow: int
    concurrent: int
    payload: int = 18

    @property
    def packets(self) -> int:
        return self.flows * self.per_flow

    @property
    def ip_bytes(self) -> int:
        """IP bytes of one packet."""
        return 20 + 8 + self.payload

    def send(self, flowgen: str, src: Endpoint, dst_mac: str, dst_ip: str,
             seconds: float = 60) -> int:
        """Send the flood from ``src`` (its namespace and interface) to ``dst_mac``/``dst_ip``;
        the number of packets sent (all of them unless ``seconds`` ran out)."""
        out = src.ns.run([flowgen, src.ifname, dst_mac, src.mac, dst_ip, str(self.flows),
                          str(self.per_flow), str(self.concurrent), str(self.payload),
                          str(seconds)], timeout=seconds + 30).stdout
        return int(out.split()[0])

    def truth(self, dst_ip: str) -> dict[FlowId, tuple[int, int]]:
        """``FlowId -> (packets, bytes)`` of the whole flood."""
        counts = (self.per_flow, self.per_flow * self.ip_bytes)
        dst = str(ipaddress.ip_address(dst_ip))
        return {FlowId(4, PROTO_UDP, str(ipaddress.IPv4Address(FIRST_SOURCE + f)), dst,
                       1024 + f % 50000, DPORT): counts for f in range(self.flows)}


def rx_dropped(end: Endpoint) -> int:
    """Packets the kernel dropped on ``end``'s receive path before any hook saw them (backlog
    full, ...): ``ip -s link`` rx dropped."""
    out = end.ns.run(["ip", "-s", "-j", "link", "show", end.ifname]).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["dropped"])
