"""Talk to the real ``agent`` CLI like an operator would: commands, exported flows, captures.

The background process itself is :class:`tests.support.agentproc.Agent`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.agentproc import Agent
from tests.support.pcapgen import SAMPLE_EPOCH_NS, FlowSpec, PcapBuilder
from tests.support.truth import FlowId, record_table

T0 = SAMPLE_EPOCH_NS
MS = 1_000_000
AGENT = [sys.executable, "-m", "netflow_agent.cli"]


def cli(*args: str, timeout: float = 30, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``agent ARGS`` to completion."""
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, timeout=timeout,
                          **kwargs)


def RunningAgent(config: Path, socket: Path,  # noqa: N802 - the name tests used to import
                 env: dict[str, str] | None = None) -> Agent:
    """``agent -c CONFIG`` started in the background, not waited for (the shared
    :class:`~tests.support.agentproc.Agent`; new tests use it directly)."""
    return Agent(config, socket, env=env, log_level=None).start(answer=False)


def exported(path: Path) -> list[dict[str, Any]]:
    """Flow records written by ``[[export.log]]`` (JSON lines)."""
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["type"] == "flow"]


def table(records: list[dict[str, Any]]) -> dict[FlowId, tuple[int, int]]:
    """Packets and bytes per flow id, summed over records."""
    return record_table(records)


def count_by_flow(records: list[dict[str, Any]]) -> dict[FlowId, int]:
    """How many records each flow id was exported in."""
    out: dict[FlowId, int] = {}
    for r in records:
        fid = FlowId.of_record(r)
        out[fid] = out.get(fid, 0) + 1
    return out


def steady_capture(path: Path, seconds: float, flows: int = 4, pps_per_flow: int = 20,
                   start_ns: int = T0, extra: tuple[FlowSpec, ...] = ()) -> Any:
    """UDP flows sending steadily for ``seconds`` (speed = "recorded" makes that real time),
    and the ``extra`` flows."""
    b = PcapBuilder()
    for spec in extra:
        b.add(spec)
    gap = 1_000_000_000 // pps_per_flow
    packets = int(seconds * pps_per_flow)
    for n in range(flows):
        b.add(FlowSpec("udp", f"10.7.0.{n + 1}", "10.7.1.1", 4000 + n, 53, packets=packets,
                       payload=20 + n, start_ns=start_ns + n * MS, gap_ns=gap))
    return b.write(path)
