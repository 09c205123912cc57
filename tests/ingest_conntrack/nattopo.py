"""A client - NAT router - server namespace topology for conntrack NAT tests.

Name: :class:`NatTopology`. Scope: one test module. Depends: root, ``ip``, ``iptables``,
``ip6tables``, ``conntrack``. Minimal stand-in until ``tests/support/netns.py`` provides the
routed three-namespace topology; every name is unique (``nfa-<random>``) and torn down.

Addresses (``N`` is a random subnet byte)::

    client 10.N.2.1 / fd00:N:2::1 ── router 10.N.2.254 | 10.N.3.254 ── server 10.N.3.1
                                            fd00:N:2::fe | fd00:N:3::fe    fd00:N:3::1

The router masquerades everything leaving towards the server and forwards its public port
``DNAT_PORT`` to ``client:CLIENT_PORT`` (IPv4 and IPv6).
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass, field

DNAT_PORT = 8080
CLIENT_PORT = 8000


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=30)


@dataclass
class NatTopology:
    """Three namespaces with MASQUERADE and a DNAT port forward on the router."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    net: int = field(default_factory=lambda: 100 + secrets.randbelow(150))

    def __post_init__(self) -> None:
        self.client = f"nfa-{self.tag}-c"
        self.router = f"nfa-{self.tag}-r"
        self.server = f"nfa-{self.tag}-s"
        n = self.net
        self.client4, self.router_in4 = f"10.{n}.2.1", f"10.{n}.2.254"
        self.router_out4, self.server4 = f"10.{n}.3.254", f"10.{n}.3.1"
        self.client6, self.router_in6 = f"fd00:{n}:2::1", f"fd00:{n}:2::fe"
        self.router_out6, self.server6 = f"fd00:{n}:3::fe", f"fd00:{n}:3::1"

    def ns(self, name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command in one of the namespaces."""
        return _sh("ip", "netns", "exec", name, *cmd, check=check)

    def popen(self, name: str, *cmd: str, **kw) -> subprocess.Popen:  # type: ignore[no-untyped-def,type-arg]
        """Start a command in one of the namespaces (caller ends it by PID)."""
        return subprocess.Popen(["ip", "netns", "exec", name, *cmd], **kw)

    def up(self) -> NatTopology:
        """Create namespaces, links, addresses, routes and the NAT rules."""
        for name in (self.client, self.router, self.server):
            _sh("ip", "netns", "add", name)
            self.ns(name, "ip", "link", "set", "lo", "up")
        cr, rc, rs, sr = (f"c{self.tag}", f"rc{self.tag}", f"rs{self.tag}", f"s{self.tag}")
        self.out_if = rs
        self._link(cr, self.client, rc, self.router)
        self._link(sr, self.server, rs, self.router)
        self._addr(self.client, cr, f"{self.client4}/24", f"{self.client6}/64")
        self._addr(self.router, rc, f"{self.router_in4}/24", f"{self.router_in6}/64")
        self._addr(self.router, rs, f"{self.router_out4}/24", f"{self.router_out6}/64")
        self._addr(self.server, sr, f"{self.server4}/24", f"{self.server6}/64")
        self.ns(self.client, "ip", "route", "add", "default", "via", self.router_in4)
        self.ns(self.client, "ip", "-6", "route", "add", "default", "via", self.router_in6)
        self.ns(
            self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"
        )
        self._nat_rules(rs)
        return self

    def _link(self, a: str, ns_a: str, b: str, ns_b: str) -> None:
        _sh("ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
        self.ns(ns_a, "ip", "link", "set", a, "up")
        self.ns(ns_b, "ip", "link", "set", b, "up")

    def _addr(self, name: str, dev: str, v4: str, v6: str) -> None:
        self.ns(name, "ip", "addr", "add", v4, "dev", dev)
        self.ns(name, "ip", "addr", "add", v6, "dev", dev, "nodad")

    def _nat_rules(self, out_if: str) -> None:
        for tool, client in (("iptables", self.client4), ("ip6tables", f"[{self.client6}]")):
            self.ns(
                self.router,
                tool,
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                out_if,
                "-j",
                "MASQUERADE",
            )
            for proto in ("tcp", "udp"):
                self.ns(
                    self.router,
                    tool,
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-i",
                    out_if,
                    "-p",
                    proto,
                    "--dport",
                    str(DNAT_PORT),
                    "-j",
                    "DNAT",
                    "--to-destination",
                    f"{client}:{CLIENT_PORT}",
                )

    def down(self) -> None:
        """Delete the namespaces (their veths go with them)."""
        for name in (self.client, self.router, self.server):
            _sh("ip", "netns", "del", name, check=False)

    def conntrack(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``conntrack`` in the router namespace (``-L`` evicts expired entries)."""
        return self.ns(self.router, "conntrack", *args, check=check)
