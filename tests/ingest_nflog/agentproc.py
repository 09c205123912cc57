"""Run the real ``agent`` CLI for NFLOG tests: start it, wait until it reads, stop it by PID.

Name: AgentProcess. Scope: one test. Depends: root (NFLOG groups), an installed agent.
"""

from __future__ import annotations

import ast
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

_STOPPED = re.compile(r"ingest\.nflog\[\d+\]: stopped: (\{.*\})")


class AgentProcess:
    """``python -m netflow_agent.cli -c FILE`` with its log captured.

    :param toml: the configuration text, written to ``workdir/agent.toml``.
    :param groups: how many "reading NFLOG group" lines to wait for before traffic starts.
    """

    def __init__(self, workdir: Path, toml: str, groups: int = 1):
        self.path = workdir / "agent.toml"
        self.path.write_text(toml)
        self.log_path = workdir / "agent.log"
        self.groups = groups
        self.proc: subprocess.Popen | None = None
        self.log = ""

    def start(self, timeout: float = 15) -> AgentProcess:
        """Start and wait until every group is bound (and managed rules are in place)."""
        self._log_file = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "netflow_agent.cli", "-c", str(self.path)],
                                     stdout=subprocess.DEVNULL, stderr=self._log_file)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text()
            if text.count("reading NFLOG group") >= self.groups:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"agent did not start:\n{self.log_path.read_text()}")

    def stop(self, timeout: float = 20) -> str:
        """SIGTERM by PID (the agent drains, flushes and exports), then return the log."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._log_file.close()
            self.proc = None
        self.log = self.log_path.read_text()
        return self.log

    def nflog_counters(self) -> dict[str, int]:
        """The reader counters the agent logged at stop (summed over instances)."""
        out: dict[str, int] = {}
        for match in _STOPPED.finditer(self.log):
            for key, value in ast.literal_eval(match.group(1)).items():
                out[key] = out.get(key, 0) + value
        return out

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
