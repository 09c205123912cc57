"""The seed's aggregation example and an independent oracle for it (issue 16 acceptance).

What it owns: :data:`SEED_RULES` (ipt_NETFLOW README: ``aggregation=192.0.0.0/8=16,
10.0.0.0/8=16,80-89=80,3128=80``); :func:`thousand_hosts`, the acceptance traffic (1,000
hosts in 192.0.0.0/8 to servers on ports 80-89, and 3128); :func:`seed_aggregate`, what the
rules make of one flow, computed with :mod:`ipaddress` rather than the agent's own code.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

SEED_RULES = "192.0.0.0/8=16,10.0.0.0/8=16,80-89=80,3128=80"
_NETS = (ipaddress.ip_network("192.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8"))


class HostFlow(NamedTuple):
    """One client flow of the acceptance traffic (TCP)."""

    src: str
    dst: str
    sport: int
    dport: int
    packets: int


def thousand_hosts() -> list[HostFlow]:
    """1,000 hosts in four /16s of 192.0.0.0/8, two client ports, to 10.x servers in three
    /16s on ports 80-89 (every tenth host via the proxy port 3128): 24 aggregated keys."""
    return [HostFlow(f"192.{h % 4}.{h // 250}.{h % 250 + 1}", f"10.{h % 3}.7.{h % 7 + 1}",
                     40000 + h // 500, 3128 if h % 10 == 9 else 80 + h % 10, 1 + h % 3)
            for h in range(1000)]


def seed_aggregate(src: str, dst: str, sport: int, dport: int) -> tuple[str, str, int, int]:
    """``(src, dst, sport, dport)`` after :data:`SEED_RULES` (TCP/UDP)."""

    def addr(text: str) -> str:
        ip = ipaddress.ip_address(text)
        if any(ip in net for net in _NETS):
            return str(ipaddress.ip_network(f"{text}/16", strict=False).network_address)
        return text

    def port(p: int) -> int:
        return 80 if 80 <= p <= 89 or p == 3128 else p

    return addr(src), addr(dst), port(sport), port(dport)
