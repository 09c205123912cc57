"""``[[export.ipfix]]``: IPFIX exporter settings (RFC 7011 terms, ipt_NETFLOW names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from netflow_agent.api import (
    ConfigIssue,
    EndpointError,
    Resource,
    backlog_option,
    normal_endpoint,
    option,
    parse_endpoint,
    rate_limit_option,
)

#: IANA port for IPFIX (RFC 7011 section 10.3.1 / 10.4.1), used when a destination has none.
IPFIX_PORT = 4739


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """One IPFIX exporter: collectors (mirrored), transport, content, options, spool, file."""

    destination: list[str] = option(
        default_factory=list,
        doc="Collectors as host:port or [v6addr]:port (port defaults to 4739); every one gets "
            "every record (mirrored). May be empty when `path` is set.")
    transport: Literal["udp", "tcp"] = option(
        "udp", doc="udp (templates refreshed, loss counted) or tcp (reconnect, spool).")
    observation_domain_id: int | None = option(
        None, doc="Observation Domain ID in every message header; unset = engine_id, else 0.",
        min=0, max=0xFFFFFFFF)
    engine_id: int | None = option(
        None, doc="The same as observation_domain_id, under the name every exporter accepts "
                  "(ipt_NETFLOW engine_id); set one of the two, or both to the same value.",
        min=0, max=0xFFFFFFFF)
    source: str = option("", doc="Local address[:port] to send from; empty = any.")
    sndbuf: int = option(0, doc="Socket send buffer in bytes; 0 = system default.", min=0)
    rate_limit: int = rate_limit_option("messages")
    backlog: int = backlog_option("messages")
    mtu: int = option(
        1500, doc="Path MTU in bytes; UDP messages are at most this minus IP/UDP headers "
                  "(also the message size used on TCP).", min=296, max=65535)
    template_refresh_s: float = option(
        600, doc="UDP: resend templates at least this often (seconds).", min=1, max=86400)
    refresh_rate: int = option(
        20, doc="UDP: resend templates every this many messages; 0 = only by time.", min=0)
    flows: bool = option(True, doc="Export flow records.")
    timestamps: Literal["ms", "us"] = option(
        "ms", doc="Flow start/end as flowStart/EndMilliseconds (152/153, ms) or "
                  "flowStart/EndMicroseconds (154/155, us: NTP-format dateTimeMicroseconds).")
    natevents: bool = option(False, doc="Export NAT events (NEL), as ipt_NETFLOW natevents=1.")
    nat_event_values: Literal["legacy", "rfc8158"] = option(
        "legacy", doc="natEvent values: legacy 1/2, or RFC 8158 4/5 (NAT44) and 6/7 (NAT64).")
    options_interval_s: float = option(
        60, doc="Send statistics and interface-name options records this often; 0 = never.",
        min=0)
    spool_dir: str = option(
        "", doc="TCP: directory for the spool file; empty = <[agent] state_dir>/spool, or "
                "memory only when there is no state_dir.")
    spool_max_records: int = option(
        1_000_000, doc="TCP: most records held per destination while the collector is down; "
                       "more are counted lost.", min=1)
    spool_memory_records: int = option(
        100_000, doc="TCP: records kept in memory before spilling to the spool file.", min=1)
    reconnect_interval_s: float = option(
        60, doc="TCP: smallest gap between connect attempts (RFC 7011: once per minute).",
        min=0.01)
    reconnect_max_interval_s: float = option(
        600, doc="TCP: the gap doubles after each failure up to this.", min=0.01)
    flush_timeout_s: float = option(
        5, doc="At shutdown, wait at most this long to deliver the spool (TCP) or the "
               "backlog (UDP with rate_limit).", min=0)
    path: str = option("", doc="Also write an IPFIX file (RFC 5655) here; empty = no file.")
    rotate_size_bytes: int = option(
        0, doc="Rotate the file when it reaches this size; 0 = never.", min=0)
    rotate_interval_s: float = option(
        0, doc="Rotate the file after this many seconds; 0 = never.", min=0)

    @property
    def domain_id(self) -> int:
        """The Observation Domain ID: ``observation_domain_id``, else ``engine_id``, else 0."""
        if self.observation_domain_id is not None:
            return self.observation_domain_id
        return self.engine_id if self.engine_id is not None else 0

    def endpoints(self) -> list[str]:
        """Destinations normalised to ``host:port`` / ``[v6]:port``."""
        return [normal_endpoint(text, IPFIX_PORT) for text in self.destination]

    def check(self) -> list[ConfigIssue]:
        """Pure checks of this table (no I/O)."""
        issues = []
        if (self.engine_id is not None and self.observation_domain_id is not None
                and self.engine_id != self.observation_domain_id):
            issues.append(ConfigIssue(
                "engine_id", f"engine_id = {self.engine_id} and observation_domain_id = "
                f"{self.observation_domain_id} name the same header field; set only one"))
        if not self.destination and not self.path:
            issues.append(ConfigIssue("destination", "set at least one destination or a path"))
        for i, text in enumerate(self.destination):
            try:
                parse_endpoint(text, IPFIX_PORT)
            except EndpointError as exc:
                issues.append(ConfigIssue(f"destination[{i}]", str(exc)))
        if self.source:
            try:
                parse_endpoint(self.source, 0)
            except EndpointError as exc:
                issues.append(ConfigIssue("source", str(exc)))
        if not self.flows and not self.natevents:
            issues.append(ConfigIssue("flows", "flows and natevents are both off: "
                                      "this exporter would send nothing"))
        if (self.rotate_size_bytes or self.rotate_interval_s) and not self.path:
            issues.append(ConfigIssue("path", "rotation is set but there is no path",
                                      "warning"))
        if self.reconnect_max_interval_s < self.reconnect_interval_s:
            issues.append(ConfigIssue("reconnect_max_interval_s",
                                      "must be >= reconnect_interval_s"))
        if self.spool_memory_records > self.spool_max_records:
            issues.append(ConfigIssue("spool_memory_records",
                                      "larger than spool_max_records", "warning"))
        return issues

    def resources(self) -> list[Resource]:
        """The output file is exclusive to one instance."""
        return [Resource("file", self.path)] if self.path else []
