"""The debug exporter: flow records and NAT events as JSON lines (or text) on a stream."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from typing import Any, TextIO

from netflow_agent.api import (
    FlowBatch,
    FlowRecord,
    NatEvent,
    NatExporter,
    RunContext,
    hookimpl,
    open_output,
)

from .config import Config

#: records turned into lines at a time
CHUNK = 4096
_PROTO = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}


def flow_text(rec: FlowRecord) -> str:
    """``TCP 10.0.0.1:80 -> 10.0.0.2:5000 pkts=3 bytes=180`` style line."""
    src, dst = ipaddress.ip_address(rec.src_addr), ipaddress.ip_address(rec.dst_addr)
    proto = _PROTO.get(rec.protocol, str(rec.protocol))
    fmt = "[{}]:{}" if rec.ip_version == 6 else "{}:{}"
    return (f"{proto:<6} {fmt.format(src, rec.src_port)} -> {fmt.format(dst, rec.dst_port)} "
            f"pkts={rec.packets} bytes={rec.octets} flags=0x{rec.tcp_flags:02x} "
            f"in={rec.in_if} out={rec.out_if} end={rec.end_reason}")


class LogExporter(NatExporter):
    """``[[export.log]]``."""

    stage = "export"
    type_name = "log"

    def __init__(self, config: Config, name: str):
        super().__init__(config, name)
        self.stream: TextIO | None = None
        self.written = 0

    @hookimpl
    def agent_start(self, context: RunContext) -> None:
        """Open the output (a file it creates is 0640, see :func:`open_output`)."""
        path = self.config.path
        self.stream = sys.stdout if path == "-" else os.fdopen(open_output(path), "a",
                                                                encoding="utf-8")

    def _write(self, lines: list[str]) -> None:
        assert self.stream is not None
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()
        self.written += len(lines)

    @hookimpl
    def agent_export_flows(self, records: FlowBatch) -> None:
        """One line per record, written in chunks (a line is text per flow by nature; the
        chunks keep the memory of a big scan bounded)."""
        if not self.config.flows or not records:
            return
        flows = records.flows if isinstance(records, FlowBatch) else None
        chunks = ([FlowBatch(records.source, flows[i:i + CHUNK], schema=records.schema)
                   for i in range(0, len(flows), CHUNK)] if flows is not None else [records])
        for chunk in chunks:
            if self.config.format == "json":
                self._write([json.dumps({"type": "flow", **r.to_dict()}) for r in chunk])
            else:
                self._write([flow_text(r) for r in chunk])

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
