"""The ``[[export.counter]]`` exporter: totals per IP protocol, written as a JSON file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from netflow_agent.api import Exporter, FlowBatch, RunContext, hookimpl

from .config import Config

_NS_PER_S = 1_000_000_000


class CounterExporter(Exporter):
    """Counts flows, packets and bytes per protocol; all state is per instance."""

    stage = "export"
    type_name = "counter"

    def __init__(self, config: Config, name: str):
        super().__init__(config, name)
        self.by_protocol: dict[int, dict[str, int]] = {}
        self.writes = 0
        self.write_errors = 0
        self._last_write_ns = 0

    @hookimpl
    def agent_start(self, context: RunContext) -> None:
        """Start the periodic clock at the agent's clock (the capture clock in replays)."""
        self._last_write_ns = context.now_ns()

    @hookimpl
    def agent_export_flows(self, records: FlowBatch) -> None:
        """Add the records' counters (they are deltas) to the totals.

        Reads the batch's columns (one NumPy array per field) rather than iterating
        ``FlowRecord`` objects: a few array operations per batch, whatever its size.
        """
        flows = records.flows
        for protocol in set(flows["protocol"].tolist()):
            rows = flows[flows["protocol"] == protocol]
            totals = self.by_protocol.setdefault(
                protocol, {"flows": 0, "packets": 0, "bytes": 0}
            )
            totals["flows"] += len(rows)
            totals["packets"] += int(rows["packets"].sum())
            totals["bytes"] += int(rows["octets"].sum())

    @hookimpl
    def agent_tick(self, now_ns: int) -> None:
        """Write the summary every ``every_s`` seconds of the agent clock, if configured."""
        every_s = self.config.every_s
        if every_s and now_ns - self._last_write_ns >= every_s * _NS_PER_S:
            self._last_write_ns = now_ns
            self.write_summary()

    @hookimpl
    def agent_stop(self) -> None:
        """Write the final summary (the cache has been drained into us by now)."""
        self.write_summary()

    @hookimpl
    def agent_collect_stats(self) -> dict[str, Any]:
        """Counters for ``agent stats``."""
        return {
            "writes": self.writes,
            "write_errors": self.write_errors,
            "flows": sum(t["flows"] for t in self.by_protocol.values()),
        }

    def summary(self) -> dict[str, Any]:
        """The JSON document: grand totals plus totals per protocol number."""
        totals = self.by_protocol.values()
        return {
            "flows": sum(t["flows"] for t in totals),
            "packets": sum(t["packets"] for t in totals),
            "bytes": sum(t["bytes"] for t in totals),
            "by_protocol": {str(p): dict(t) for p, t in sorted(self.by_protocol.items())},
        }

    def write_summary(self) -> None:
        """Replace the file atomically; an I/O error is logged and counted, never raised."""
        path = Path(self.config.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(self.summary(), out, indent=1, sort_keys=True)
            os.replace(tmp, path)
            self.writes += 1
        except OSError as exc:
            self.write_errors += 1
            self.log.warning("%s: cannot write %s: %s", self.name, path, exc)
