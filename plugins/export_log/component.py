"""The debug exporter: flow records and NAT events as JSON lines (or text) on a stream."""

from __future__ import annotations

import ipaddress
import json
import sys
from typing import Any, TextIO

from netflow_agent import hookimpl
from netflow_agent.model import FlowRecord, NatEvent
from netflow_agent.registry import Component
from netflow_agent.runtime import RunContext

from .config import Config

_PROTO = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}


def flow_text(rec: FlowRecord) -> str:
    """``TCP 10.0.0.1:80 -> 10.0.0.2:5000 pkts=3 bytes=180`` style line."""
    src, dst = ipaddress.ip_address(rec.src_addr), ipaddress.ip_address(rec.dst_addr)
    proto = _PROTO.get(rec.protocol, str(rec.protocol))
    fmt = "[{}]:{}" if rec.ip_version == 6 else "{}:{}"
    return (f"{proto:<6} {fmt.format(src, rec.src_port)} -> {fmt.format(dst, rec.dst_port)} "
            f"pkts={rec.packets} bytes={rec.octets} flags=0x{rec.tcp_flags:02x} "
            f"in={rec.in_if} out={rec.out_if} end={rec.end_reason}")


class LogExporter(Component):
    """``[[export.log]]``."""

    stage = "export"
    type_name = "log"

    def __init__(self, config: Config, name: str):
        super().__init__(config, name)
        self.stream: TextIO | None = None
        self.written = 0

    @hookimpl
    def agent_start(self, context: RunContext) -> None:
        """Open the output."""
        path = self.config.path
        self.stream = sys.stdout if path == "-" else open(path, "a", encoding="utf-8")  # noqa: SIM115

    def _write(self, lines: list[str]) -> None:
        assert self.stream is not None
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()
        self.written += len(lines)

    @hookimpl
    def agent_export_flows(self, records: list[FlowRecord]) -> None:
        """One line per record."""
        if not self.config.flows or not records:
            return
        if self.config.format == "json":
            self._write([json.dumps({"type": "flow", **r.to_dict()}) for r in records])
        else:
            self._write([flow_text(r) for r in records])

    @hookimpl
    def agent_export_nat_events(self, events: list[NatEvent]) -> None:
        """One line per NAT event."""
        if self.config.natevents and events:
            self._write([json.dumps({"type": "nat", **e.to_dict()}) for e in events])

    @hookimpl
    def agent_stop(self) -> None:
        """Close the file (standard output stays open)."""
        if self.stream is not None and self.stream is not sys.stdout:
            self.stream.close()
        self.stream = None

    @hookimpl
    def agent_collect_stats(self) -> dict[str, Any]:
        """Lines written."""
        return {"written": self.written}
