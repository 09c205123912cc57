"""Run the real ``agent`` CLI from tests: to completion, or in the background as :class:`Agent`.

The one helper for agent processes in tests (it replaced four near-copies):

* :func:`agent_script`: the installed ``agent`` console script (the entry point users run);
* :func:`run_agent`: run that script with arguments to completion, output captured;
* :class:`Agent`: ``python -m netflow_agent.cli [--log-level L] -c FILE`` in the background (under a
  ``prefix`` such as ``prlimit`` when asked), stderr in a log file; :meth:`Agent.start` waits
  until a log fragment appears and the control socket answers; :meth:`Agent.wait_for` polls
  its statistics (what ``agent stats --json`` prints) until a condition holds;
  :meth:`Agent.stop` ends it by PID with SIGTERM (the agent drains, flushes and exports) and
  returns its exit status. Nothing waits a fixed time: every wait is on a condition with a
  deadline, and a failure says what was awaited, with the agent's log.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from netflow_agent.control import ControlError, request

#: the agent as a module of this interpreter (no console script needed)
AGENT_MODULE = [sys.executable, "-m", "netflow_agent.cli"]
REPO_ROOT = Path(__file__).resolve().parents[2]


def agent_script() -> str:
    """The ``agent`` console script next to this interpreter, else ``agent`` on ``PATH``."""
    script = Path(sys.executable).parent / "agent"
    return str(script) if script.exists() else "agent"


def run_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``agent ARGS...`` (the console script) to completion; stdout/stderr captured."""
    return subprocess.run([agent_script(), *args], capture_output=True, text=True,
                          timeout=timeout)


class Agent:
    """The agent CLI in the background, with its log and (optionally) its control socket.

    :param config: the configuration file or directory.
    :param socket: the control socket it is configured with (``None``: no statistics).
    :param log_path: where stderr goes (default: ``config`` with the suffix ``.log``).
    :param log_level: ``--log-level`` (``None``: from ``[agent] debug``).
    :param prefix: a command to run the agent under (e.g. ``["prlimit", "--as=..."]``).
    :param env: the environment (default: this process's).
    """

    def __init__(self, config: Path, socket: Path | str | None = None, *,
                 log_path: Path | None = None, log_level: str | None = "info",
                 prefix: Sequence[str] = (), env: dict[str, str] | None = None):
        self.config = Path(config)
        self.socket = Path(socket) if socket else None
        self.log_path = log_path or self.config.with_suffix(".log")
        self.log_level = log_level
        self.prefix = list(prefix)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_seconds = -1.0  # how long the last stop() took
        self.stats_latency: list[float] = []  # how long each stats() answer took

    @classmethod
    def in_dir(cls, workdir: Path, text: str, **kwargs: Any) -> Agent:
        """Write ``text`` to ``workdir/agent.toml`` (``{socket}`` becomes
        ``workdir/agent.sock``, the control socket) and return the (unstarted) agent."""
        sock = workdir / "agent.sock"
        path = workdir / "agent.toml"
        path.write_text(text.replace("{socket}", str(sock)))
        return cls(path, sock if "{socket}" in text else kwargs.pop("socket", None), **kwargs)

    # --- starting ------------------------------------------------------------------------

    def start(self, ready: str = "", *, count: int = 1, answer: bool = True,
              timeout: float = 20) -> Agent:
        """Start; wait until ``ready`` is in the log ``count`` times and (with a socket and
        ``answer``) the control socket answers.

        :raise AssertionError: the agent exited first, or ``timeout`` passed (it is killed;
            the message holds the log).
        """
        args = ["--log-level", self.log_level] if self.log_level else []
        with self.log_path.open("w") as err:
            self.proc = subprocess.Popen([*self.prefix, *AGENT_MODULE, *args, "-c",
                                          str(self.config)], stdout=subprocess.DEVNULL,
                                         stderr=err, cwd=REPO_ROOT, env=self.env)
        try:
            if ready:
                self.wait_log(lambda text: text.count(ready) >= count, timeout,
                              what=f"log {ready!r}" + (f" x{count}" if count > 1 else ""))
            if self.socket and answer:
                self.wait_ready(timeout)
        except AssertionError:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        """Until the control socket answers."""
        self.wait_for(lambda s: True, timeout, what="control socket")

    # --- observing -----------------------------------------------------------------------

    def log(self) -> str:
        """What the agent wrote to stderr so far."""
        return self.log_path.read_text() if self.log_path.exists() else ""

    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def wait_log(self, predicate: Callable[[str], bool], timeout: float = 20,
                 what: str = "log condition") -> str:
        """Poll the log until ``predicate(log)``; fail with the log if the agent exits first
        or on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if predicate(text):
                return text
            if not self.running():
                break
            time.sleep(0.05)
        code = self.proc.poll() if self.proc is not None else None
        raise AssertionError(f"agent did not {what} (exit status {code}):\n{self.log()}")

    def stats(self, timeout: float = 10) -> dict[str, Any]:
        """One ``stats-json`` snapshot through the control socket (answer time recorded)."""
        started = time.monotonic()
        assert self.socket is not None, "no control socket configured"
        reply = request(str(self.socket), "stats-json", timeout=timeout)
        self.stats_latency.append(time.monotonic() - started)
        assert reply.get("ok"), reply
        return reply["stats"]  # type: ignore[no-any-return]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20,
                 what: str = "condition") -> dict[str, Any]:
        """Poll snapshots until ``predicate(snapshot)``; fail with the log on timeout."""
        assert self.socket is not None, "no control socket given to Agent: no statistics"
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"agent exited ({self.exit_status()}) while waiting for "
                                     f"{what}:\n{self.log()}")
            try:
                last = self.stats()
            except (ControlError, OSError, AssertionError) as exc:
                last = exc
            else:
                if predicate(last):
                    return last
            time.sleep(0.05)
        raise AssertionError(f"timeout waiting for {what}; last: {last}\n{self.log()}")

    def settled_stats(self, key: Callable[[dict[str, Any]], Any], quiet: float = 1.0,
                      timeout: float = 30) -> dict[str, Any]:
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

    def exit_status(self) -> int | None:
        """The exit status, or ``None`` while it runs."""
        return self.proc.poll() if self.proc is not None else None

    # --- ending --------------------------------------------------------------------------

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the agent (by PID)."""
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM by PID (if still running) and wait; return the exit status.

        :raise AssertionError: it ignored SIGTERM for ``timeout`` seconds (then it is killed).
        """
        assert self.proc is not None, "not started"
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"agent ignored SIGTERM for {timeout} s:\n{self.log()}"
                                 ) from None
        self.exit_seconds = time.monotonic() - started
        return code

    def wait_exit(self, timeout: float = 30) -> int:
        """Wait for the agent to end by itself (a finite replay); return the exit status."""
        assert self.proc is not None, "not started"
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL by PID if it still runs (cleanup after a failure)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running():
            self.stop()


_NFLOG_STOPPED = re.compile(r"ingest\.nflog\[\d+\]: stopped: (\{.*\})")


def nflog_counters(log: str) -> dict[str, int]:
    """The NFLOG reader counters an agent logged at stop (summed over instances)."""
    out: dict[str, int] = {}
    for match in _NFLOG_STOPPED.finditer(log):
        for key, value in ast.literal_eval(match.group(1)).items():
            out[key] = out.get(key, 0) + value
    return out
