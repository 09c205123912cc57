"""Aggregation rules from ipt_NETFLOW's ``aggregation=`` option, as the ``[aggregate]`` stage.

Grammar (the seed's): comma-separated rules, or a TOML list of them.

* netmask rule ``PREFIX/LEN=NEWLEN``: an address inside PREFIX/LEN is cut to NEWLEN bits
  (``192.0.0.0/8=16``); IPv6 prefixes work the same way (``2001:db8::/32=48``);
* port rule ``LOW-HIGH=PORT`` or ``PORT=PORT``: a port in the range becomes PORT
  (``80-89=80``, ``3128=80``).

Rules apply to source and destination alike; netmask and port rules are each tried in order
and the first match of each kind wins. Aggregated prefix lengths are reported as the record's
source/destination mask, as ipt_NETFLOW does. Records that become equal are merged within
each export round (counters summed, times widened, flags OR-ed).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, NamedTuple

from netflow_agent import hookimpl
from netflow_agent.config.schema import option
from netflow_agent.errors import ConfigIssue
from netflow_agent.model import FlowRecord
from netflow_agent.packet import PORT_PROTOCOLS
from netflow_agent.registry import Component


class NetmaskRule(NamedTuple):
    """``PREFIX/LEN=NEWLEN`` as integers: match ``addr & mask == net``, keep ``newmask``."""

    version: int
    net: int
    mask: int
    newmask: int
    newlen: int


class PortRule(NamedTuple):
    """``LOW-HIGH=PORT``."""

    low: int
    high: int
    port: int


def parse_rule(text: str) -> NetmaskRule | PortRule:
    """Parse one rule; raise ``ValueError`` with a message that says what is wrong."""
    left, sep, right = text.strip().partition("=")
    if not sep or not left or not right:
        raise ValueError(f"'{text}': expected PREFIX/LEN=NEWLEN or LOW-HIGH=PORT")
    if "/" in left:
        return _netmask_rule(text, left, right)
    return _port_rule(text, left, right)


def _netmask_rule(text: str, left: str, right: str) -> NetmaskRule:
    try:
        net = ipaddress.ip_network(left.strip(), strict=False)
        newlen = int(right)
    except ValueError as exc:
        raise ValueError(f"'{text}': {exc}") from None
    if not 0 <= newlen <= net.max_prefixlen:
        raise ValueError(f"'{text}': new prefix length must be 0..{net.max_prefixlen}")
    bits = net.max_prefixlen
    newmask = ((1 << newlen) - 1) << (bits - newlen) if newlen else 0
    return NetmaskRule(net.version, int(net.network_address), int(net.netmask), newmask, newlen)


def _port_rule(text: str, left: str, right: str) -> PortRule:
    low_s, dash, high_s = left.partition("-")
    try:
        low, high, port = int(low_s), int(high_s if dash else low_s), int(right)
    except ValueError:
        raise ValueError(f"'{text}': ports must be numbers (LOW-HIGH=PORT)") from None
    if not (0 <= low <= high <= 65535 and 0 <= port <= 65535):
        raise ValueError(f"'{text}': ports must be 0..65535 with LOW <= HIGH")
    return PortRule(low, high, port)


def split_rules(rules: str | list[str]) -> list[str]:
    """Accept the seed's comma-separated string or a list of rules."""
    items = rules.split(",") if isinstance(rules, str) else rules
    return [r.strip() for r in items if r.strip()]


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregateConfig:
    """``[aggregate]``: ipt_NETFLOW's ``aggregation`` rules."""

    rules: str | list[str] = option(
        default_factory=list,
        doc='Rules like "192.0.0.0/8=16,80-89=80" (a string or a list of strings).')

    def check(self) -> list[ConfigIssue]:
        """Each rule must parse."""
        issues = []
        for n, rule in enumerate(split_rules(self.rules)):
            try:
                parse_rule(rule)
            except ValueError as exc:
                path = f"rules[{n}]" if isinstance(self.rules, list) else "rules"
                issues.append(ConfigIssue(path, str(exc)))
        return issues


class Aggregator(Component):
    """The built-in aggregation stage."""

    stage = "aggregate"
    type_name = "rules"

    def __init__(self, config: AggregateConfig, name: str = "aggregate"):
        super().__init__(config, name)
        parsed = [parse_rule(r) for r in split_rules(config.rules)]
        self.netmask_rules = [r for r in parsed if isinstance(r, NetmaskRule)]
        self.port_rules = [r for r in parsed if isinstance(r, PortRule)]
        self.merged = 0

    def _addr(self, addr: bytes) -> tuple[bytes, int]:
        version = 4 if len(addr) == 4 else 6
        value = int.from_bytes(addr, "big")
        for r in self.netmask_rules:
            if r.version == version and value & r.mask == r.net:
                return (value & r.newmask).to_bytes(len(addr), "big"), r.newlen
        return addr, 0

    def _port(self, port: int) -> int:
        for r in self.port_rules:
            if r.low <= port <= r.high:
                return r.port
        return port

    def rewrite(self, rec: FlowRecord) -> None:
        """Apply the rules to one record in place."""
        if self.netmask_rules:
            rec.src_addr, smask = self._addr(rec.src_addr)
            rec.dst_addr, dmask = self._addr(rec.dst_addr)
            rec.src_mask = smask or rec.src_mask
            rec.dst_mask = dmask or rec.dst_mask
        if self.port_rules and rec.protocol in PORT_PROTOCOLS:
            rec.src_port = self._port(rec.src_port)
            rec.dst_port = self._port(rec.dst_port)

    @hookimpl
    def agent_aggregate_flows(self, records: list[FlowRecord]) -> list[FlowRecord] | None:
        """Rewrite addresses and ports, then merge records that became equal."""
        if not (self.netmask_rules or self.port_rules):
            return None
        merged: dict[tuple[Any, ...], FlowRecord] = {}
        for rec in records:
            self.rewrite(rec)
            ident = (rec.key(), rec.out_if, rec.src_mask, rec.dst_mask)
            prev = merged.get(ident)
            if prev is None:
                merged[ident] = rec
                continue
            self.merged += 1
            prev.packets += rec.packets
            prev.octets += rec.octets
            prev.start_ns = min(prev.start_ns, rec.start_ns)
            prev.end_ns = max(prev.end_ns, rec.end_ns)
            prev.tcp_flags |= rec.tcp_flags
        return list(merged.values())

    @hookimpl
    def agent_collect_stats(self) -> dict[str, Any]:
        """Rules in use and how many records were merged."""
        return {"rules": len(self.netmask_rules) + len(self.port_rules), "merged": self.merged}
