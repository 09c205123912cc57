"""Helpers for the reliability tests: the real agent process, its stats, memory and a flood.

* :class:`AgentProc`: ``python -m netflow_agent.cli -c FILE`` (optionally under ``prlimit``), with
  its control socket in the test's directory; :meth:`AgentProc.stats` asks it over the
  control socket (what ``agent stats --json`` prints) and times the answer; memory is read
  from ``/proc/PID/status``; :meth:`AgentProc.stop` sends SIGTERM by PID and times the exit.
* :data:`FLOOD`: a bounded UDP flood from many source addresses through a raw socket
  (``IP_HDRINCL``), run inside the sender's namespace; it prints how many packets it sent
  and the per-source ground truth is implied by the round-robin order (see :func:`flood`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from netflow_agent.control import ControlError, request

ROOT = Path(__file__).resolve().parents[2]
AGENT = [sys.executable, "-m", "netflow_agent.cli"]


class AgentProc:
    """The agent CLI in the foreground, stopped by PID.

    :param conf: configuration text; ``{socket}`` is replaced by the control socket path.
    :param prefix: a command to run the agent under (e.g. ``["prlimit", "--as=..."]``).
    """

    def __init__(self, workdir: Path, conf: str, prefix: list[str] | None = None):
        self.socket = str(workdir / "agent.sock")
        self.path = workdir / "agent.toml"
        self.path.write_text(conf.replace("{socket}", self.socket))
        self.log_path = workdir / "agent.log"
        self.prefix = prefix or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_seconds = -1.0
        self.stats_latency: list[float] = []

    def start(self, ready: str, timeout: float = 20) -> AgentProc:
        """Start; wait until the log contains ``ready`` and the control socket answers."""
        log = open(self.log_path, "w")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen([*self.prefix, *AGENT, "--log-level", "info", "-c",
                                      str(self.path)], stdout=subprocess.DEVNULL, stderr=log,
                                     cwd=ROOT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready in self.log() and os.path.exists(self.socket):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"agent did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stats(self, timeout: float = 10) -> dict[str, Any]:
        """The ``agent stats --json`` snapshot; the answer time is kept in stats_latency."""
        started = time.monotonic()
        reply = request(self.socket, "stats-json", timeout=timeout)
        self.stats_latency.append(time.monotonic() - started)
        assert reply.get("ok"), reply
        return reply["stats"]  # type: ignore[no-any-return]

    def settled_stats(self, key: Any, quiet: float = 1.0, timeout: float = 30) -> dict[str, Any]:
        """Poll stats until ``key(stats)`` has not changed for ``quiet`` seconds."""
        last, since = None, time.monotonic()
        deadline = since + timeout
        while time.monotonic() < deadline:
            snap = self.stats()
            value = key(snap)
            if value != last:
                last, since = value, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return snap
            time.sleep(0.1)
        raise AssertionError(f"counters never settled: {last}")

    def memory_kb(self) -> dict[str, int]:
        """``VmRSS`` and ``VmHWM`` (peak RSS) of the agent process, in KiB."""
        assert self.proc is not None
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM by PID; the agent flushes and exports. Returns the exit code."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"agent ignored SIGTERM for {timeout} s:\n{self.log()}"
                                 ) from None
        self.exit_seconds = time.monotonic() - started
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> AgentProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def exported_flows(path: Path) -> list[dict[str, Any]]:
    """Flow records from an ``[[export.log]]`` JSON-lines file."""
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("type") == "flow"]


#: Bounded flood: argv = dst, dport, packets, sources, first source (dotted), seconds limit.
#: Source i (i = 0..sources-1) is first_source + i; packet k comes from source k % sources,
#: so every source sends packets // sources (+1 for the first packets % sources) packets.
FLOOD = r"""
import ipaddress, json, socket, struct, sys, time
dst, dport, n, nsrc, first, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), int(ipaddress.ip_address(sys.argv[5])), float(sys.argv[6])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
d = socket.inet_aton(dst)
payload = b"x" * 18
pkts = [struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, 0, 0x4000, 64, 17, 0,
                    struct.pack("!I", first + i), d)
        + struct.pack("!HHHH", 40000 + i % 20000, dport, 26, 0) + payload
        for i in range(nsrc)]
sent = failed = 0
start = time.monotonic()
end = start + limit
addr = (dst, 0)
for k in range(n):
    try:
        s.sendto(pkts[k % nsrc], addr)
        sent += 1
    except OSError:
        failed += 1
    if k & 1023 == 0 and time.monotonic() > end:
        break
print(json.dumps({"sent": sent, "failed": failed, "seconds": time.monotonic() - start}))
"""


def flood(ns: Any, dst: str, dport: int, packets: int, sources: int, first: str,
          limit_s: float = 20) -> dict[str, Any]:
    """Run :data:`FLOOD` in ``ns``; return ``{"sent", "failed", "seconds", "truth"}``.

    ``truth`` maps ``(src address, src port)`` to the packets that source sent.
    """
    out = json.loads(ns.python(FLOOD, dst, str(dport), str(packets), str(sources), first,
                               str(limit_s), timeout=limit_s + 30))
    import ipaddress

    base = int(ipaddress.ip_address(first))
    truth: Counter[tuple[str, int]] = Counter()
    sent = out["sent"]
    for i in range(min(sources, sent)):
        count = sent // sources + (1 if i < sent % sources else 0)
        truth[(str(ipaddress.ip_address(base + i)), 40000 + i % 20000)] = count
    out["truth"] = truth
    return out


__all__ = ["AgentProc", "ControlError", "exported_flows", "flood"]
