"""Floods of many distinct flows with exact ground truth (``bench/ebpf/flowgen.c``).

``flowgen`` sends raw Ethernet frames from one namespace: flow ``f`` is
``10.128.0.0 + f -> dst``, UDP ``1024 + f % 50000 -> 7000``, every packet ``20 + 8 + payload`` IP
bytes, flows in windows of ``concurrent`` with ``per_flow`` rounds each; with an IPv6
destination, odd flows are ``fd00:80::f -> dst6`` instead (``40 + 8 + payload`` bytes). So
the truth of a run is known without capturing anything: :meth:`Flood.truth`. Used by the eBPF
scale tests and benchmarks; every flood is bounded in packets and seconds.
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
FIRST_SOURCE6 = int(ipaddress.IPv6Address("fd00:80::"))
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

    def send(self, flowgen: str, src: Endpoint, dst_mac: str, dst_ip: str, dst_ip6: str = "",
             seconds: float = 60) -> int:
        """Send the flood from ``src`` (its namespace and interface) to ``dst_mac``/``dst_ip``
        (and ``dst_ip6`` for odd flows, if given); the number of packets sent (all of them
        unless ``seconds`` ran out)."""
        out = src.ns.run([flowgen, src.ifname, dst_mac, src.mac, dst_ip, str(self.flows),
                          str(self.per_flow), str(self.concurrent), str(self.payload),
                          str(seconds), *([dst_ip6] if dst_ip6 else [])],
                         timeout=seconds + 30).stdout
        return int(out.split()[0])

    def truth(self, dst_ip: str, dst_ip6: str = "") -> dict[FlowId, tuple[int, int]]:
        """``FlowId -> (packets, bytes)`` of the whole flood (as sent with ``dst_ip6``)."""
        n = self.per_flow
        dst = str(ipaddress.ip_address(dst_ip))
        dst6 = str(ipaddress.ip_address(dst_ip6)) if dst_ip6 else ""
        out = {}
        for f in range(self.flows):
            if dst6 and f % 2:
                fid = FlowId(6, PROTO_UDP, str(ipaddress.IPv6Address(FIRST_SOURCE6 + f)), dst6,
                             1024 + f % 50000, DPORT)
                out[fid] = (n, n * (40 + 8 + self.payload))
            else:
                fid = FlowId(4, PROTO_UDP, str(ipaddress.IPv4Address(FIRST_SOURCE + f)), dst,
                             1024 + f % 50000, DPORT)
                out[fid] = (n, n * (20 + 8 + self.payload))
        return out


def rx_dropped(end: Endpoint) -> int:
    """Packets the kernel dropped on ``end``'s receive path before any hook saw them (backlog
    full, ...): ``ip -s link`` rx dropped."""
    out = end.ns.run(["ip", "-s", "-j", "link", "show", end.ifname]).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["dropped"])
