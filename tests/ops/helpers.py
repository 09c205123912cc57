"""Run the real ``agent`` CLI in the background and talk to it like an operator would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netflow_agent.control import ControlError, request
from tests.support.pcapgen import SAMPLE_EPOCH_NS, FlowSpec, PcapBuilder
from tests.support.truth import FlowId, record_table

T0 = SAMPLE_EPOCH_NS
MS = 1_000_000
AGENT = [sys.executable, "-m", "netflow_agent.cli"]


def cli(*args: str, timeout: float = 30, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``agent ARGS`` to completion."""
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, timeout=timeout,
                          **kwargs)


class RunningAgent:
    """``agent -c CONFIG`` in the background; stderr goes to ``<tmp>/agent.log``.

    :param config: the TOML file.
    :param socket: the control socket it is configured with.
    """

    def __init__(self, config: Path, socket: Path, env: dict[str, str] | None = None):
        self.config = config
        self.socket = socket
        self.log_path = config.with_suffix(".log")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*AGENT, "-c", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=self._log, env=env)

    def wait_ready(self, timeout: float = 20) -> None:
        """Until the control socket answers."""
        self.wait_for(lambda s: True, timeout, what="control socket")

    def stats(self) -> dict[str, Any]:
        """One ``stats-json`` snapshot through the control socket."""
        reply = request(str(self.socket), "stats-json", timeout=10)
        assert reply["ok"], reply
        return reply["stats"]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20,
                 what: str = "condition") -> dict[str, Any]:
        """Poll snapshots until ``predicate(snapshot)``; fail with the log on timeout."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited ({self.proc.returncode}):\n{self.log()}")
            try:
                last = self.stats()
            except (ControlError, AssertionError) as exc:
                last = exc
            else:
                if predicate(last):
                    return last
            time.sleep(0.05)
        raise AssertionError(f"timeout waiting for {what}; last: {last}\n{self.log()}")

    def log(self) -> str:
        """What the agent wrote to stderr so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the agent."""
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (if still running) and wait; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._log.close()
        return code

    def wait_exit(self, timeout: float = 30) -> int:
        """Wait for the agent to end by itself (finite replay)."""
        code = self.proc.wait(timeout)
        self._log.close()
        return code


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
                   start_ns: int = T0) -> Any:
    """UDP flows sending steadily for ``seconds`` (speed = "recorded" makes that real time)."""
    b = PcapBuilder()
    gap = 1_000_000_000 // pps_per_flow
    packets = int(seconds * pps_per_flow)
    for n in range(flows):
        b.add(FlowSpec("udp", f"10.7.0.{n + 1}", "10.7.1.1", 4000 + n, 53, packets=packets,
                       payload=20 + n, start_ns=start_ns + n * MS, gap_ns=gap))
    return b.write(path)
