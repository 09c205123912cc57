"""``[[export.netflow]]`` configuration: ipt_NETFLOW's export options, per instance.

Option names follow ipt_NETFLOW where it has them (``protocol``, ``destination``, ``sndbuf``,
``refresh_rate``, ``timeout_rate``, ``natevents``); see the seed README "OPTIONS".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from netflow_agent.api import (
    ConfigIssue,
    EndpointError,
    Resource,
    address_family,
    backlog_option,
    normal_endpoint,
    option,
    parse_endpoint,
    rate_limit_option,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Export flows and/or NAT events as NetFlow v5 or v9 over UDP."""

    destination: list[str] = option(
        doc='Collectors as "host:port" or "[v6addr]:port"; several = the same stream mirrored '
        "to each (ipt_NETFLOW destination=a,b).", min_items=1)
    protocol: Literal[5, 9] = option(5, doc="NetFlow version: 5 or 9.")
    source: str = option(
        "", doc='Local address to send from, "addr" or "addr:port"; "" = chosen by routing.')
    sndbuf: int = option(
        0, doc="Socket send buffer in bytes; 0 = system default (raise it on 'sndbuf reached').",
        min=0, max=2**31 - 1)
    rate_limit: int = rate_limit_option("datagrams")
    backlog: int = backlog_option("datagrams")
    engine_id: int = option(
        0, doc="v9 Source ID (observation domain); v5 engine_id (low 8 bits).",
        min=0, max=2**32 - 1)
    engine_type: int = option(0, doc="v5 engine_type.", min=0, max=255)
    mtu: int = option(
        1400, doc="Largest v9 export packet in bytes (v5 packets hold at most 30 records).",
        min=512, max=65507)
    refresh_rate: int = option(
        20, doc="v9: resend templates every this many export packets.", min=1, max=2**31 - 1)
    timeout_rate: int = option(
        30, doc="v9: resend templates every this many minutes.", min=1, max=10080)
    counters64: bool = option(False, doc="v9: 8-byte packet and octet counters instead of 4.")
    flows: bool = option(True, doc="Send flow records to these destinations.")
    natevents: bool = option(
        False, doc="Send NAT translation events (v9: NEL records; v5: pseudo-flows).")
    nat_event_values: Literal["legacy", "rfc8158"] = option(
        "legacy", doc='natEvent values: "legacy" = 1/2 (ipt_NETFLOW, Cisco); '
        '"rfc8158" = 4/5 NAT44, 6/7 NAT64 session create/delete.')

    def endpoints(self) -> set[str]:
        """The destinations normalised (``host:port`` / ``[v6]:port``): a reload that only
        rewrites one (spaces) still finds its stream (:attr:`RunContext.handover`)."""
        return {normal_endpoint(text) for text in self.destination}

    def check(self) -> list[ConfigIssue]:
        """Pure checks: endpoints parse, source family matches, something to send."""
        issues = self._check_destinations()
        if not (self.flows or self.natevents):
            issues.append(ConfigIssue("flows", "flows and natevents are both false: "
                                      "this exporter would send nothing"))
        if self.protocol == 5 and self.counters64:
            issues.append(ConfigIssue("counters64", "NetFlow v5 counters are 32-bit; "
                                      "counters64 only applies to protocol 9", "warning"))
        if self.protocol == 5 and self.engine_id > 255:
            issues.append(ConfigIssue("engine_id", "NetFlow v5 carries only the low 8 bits "
                                      f"of engine_id ({self.engine_id & 0xFF})", "warning"))
        return issues

    def _check_destinations(self) -> list[ConfigIssue]:
        issues = []
        source_family = None
        if self.source:
            try:
                host, _ = parse_endpoint(self.source, 0)
            except EndpointError as exc:
                return [ConfigIssue("source", str(exc))]
            source_family = address_family(host)
            if source_family is None:
                issues.append(ConfigIssue("source", f"'{host}' is not an IPv4/IPv6 address"))
        for i, text in enumerate(self.destination):
            try:
                host, port = parse_endpoint(text)
            except EndpointError as exc:
                issues.append(ConfigIssue(f"destination[{i}]", str(exc)))
                continue
            if port == 0:
                issues.append(ConfigIssue(f"destination[{i}]", f"{text!r}: port 0"))
            family = address_family(host)
            if source_family and family and family != source_family:
                issues.append(ConfigIssue(f"destination[{i}]", f"{text!r}: address family "
                                          f"differs from source '{self.source}'"))
        return issues

    def resources(self) -> list[Resource]:
        """A source address with a fixed port can be bound by one instance only."""
        if self.source:
            try:
                host, port = parse_endpoint(self.source, 0)
            except EndpointError:
                return []
            if port:
                return [Resource("udp-bind", f"{host}:{port}")]
        return []
