"""Run the real ``agent`` CLI from tests: to completion, or in the background until it is ready.

What it owns:

* :func:`agent_script`: the installed ``agent`` console script (the entry point users run);
* :func:`run_agent`: run that script with arguments to completion, output captured;
* :func:`start_agent` / :func:`stop_agent`: ``python -m netflow_agent.cli --log-level info -c FILE``
  in the background with stderr in a log file, wait for a readiness line, and stop it by PID
  with SIGTERM, requiring exit status 0 (the agent drains, flushes and exports first).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.netns import end_process

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


def start_agent(conf: Path, log: Path, ready: str, timeout: float = 20) -> subprocess.Popen:
    """Start the agent on ``conf`` and wait until ``ready`` appears in its log.

    :param log: where the agent's stderr (its log, level info) goes.
    :param ready: a log fragment that says the component under test is running.
    :raise AssertionError: when the agent exits or ``timeout`` passes first (it is ended
        by PID; the message holds the log).
    """
    with log.open("w") as err:
        proc = subprocess.Popen([*AGENT_MODULE, "--log-level", "info", "-c", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=err, cwd=REPO_ROOT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready in log.read_text():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    end_process(proc)
    raise AssertionError(f"agent did not log {ready!r}:\n{log.read_text()}")


def stop_agent(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM by PID and require a clean exit (status 0) within ``timeout`` seconds."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=timeout) == 0
