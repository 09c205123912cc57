"""The ``[[ingest.conntrack]]`` table: which namespace to watch and how."""

from __future__ import annotations

import re
from dataclasses import dataclass

from netflow_agent.config.schema import option
from netflow_agent.errors import ConfigIssue
from netflow_agent.registry import Resource

_NETNS_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """NAT events from conntrack (ipt_NETFLOW ``natevents``)."""

    netns: str = option(
        "",
        doc="Network namespace to watch: a name under /run/netns or a path such as "
        "/proc/PID/ns/net; empty = the agent's own namespace.",
    )
    rcvbuf: int = option(
        4 * 1024 * 1024,
        doc="Event socket receive buffer in bytes (SO_RCVBUFFORCE); overruns are counted "
        "and repaired by a table dump. 0 = system default.",
        min=0,
        max=1 << 30,
    )
    set_sysctls: bool = option(
        True,
        doc="Set net.netfilter.nf_conntrack_events=1, nf_conntrack_timestamp=1 and "
        "nf_conntrack_acct=1 in the watched namespace (logged), so every connection "
        "reports its stop with exact start/stop times.",
    )
    nat_only: bool = option(
        True,
        doc="Report only translated connections (SNAT, MASQUERADE, DNAT); false = every "
        "connection.",
    )
    reliable: bool = option(
        True,
        doc="Conntrack reliable event mode: a stop event that does not fit the socket is "
        "redelivered by the kernel instead of dropped (the entry waits on the dying list "
        "meanwhile); false = lossy, lost stops are found by the next dump.",
    )
    resync_interval: int = option(
        300,
        doc="Seconds between consistency dumps of the conntrack table (stops for entries "
        "whose events the kernel never sent); 0 = dump only at start and after overruns.",
        min=0,
        max=86400,
    )

    def check(self) -> list[ConfigIssue]:
        """Pure checks: a namespace is a plain name or an absolute path."""
        if self.netns and not (self.netns.startswith("/") or _NETNS_NAME.match(self.netns)):
            return [
                ConfigIssue(
                    "netns",
                    f"{self.netns!r} is neither a namespace name "
                    "(letters, digits, '_', '.', '-') nor an absolute path",
                )
            ]
        return []

    def resources(self) -> list[Resource]:
        """One conntrack listener per namespace: two would export every event twice."""
        return [Resource("conntrack-events", f"netns={self.netns or '(own)'}")]
