"""The console script and ``python -m netflow_agent.cli`` drop NumPy's page cache on the
daemon's run path only, before NumPy is imported (agent/launch.py); the other subcommands
leave the page cache alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: runs the console script's entry with ``libcache.drop`` replaced by a recorder that says
#: whether NumPy was loaded when it was called
PROBE = """
import sys
from netflow_agent import libcache

def record(*args, **kwargs):
    print("drop called; numpy loaded:", "numpy" in sys.modules, file=sys.stderr, flush=True)
    return 0

libcache.drop = record
from netflow_agent.launch import entry
entry(sys.argv[1:])
"""


#: the same, through ``python -m netflow_agent.cli`` (as the benches and test agents start)
PROBE_MODULE = PROBE.replace(
    "from netflow_agent.launch import entry\nentry(sys.argv[1:])",
    "import runpy\nrunpy.run_module('netflow_agent.cli', run_name='__main__', alter_sys=True)")


def launch(*argv: str, probe: str = PROBE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("probe", [PROBE, PROBE_MODULE], ids=["script", "python-m"])
def test_the_run_path_drops_before_numpy_is_imported(probe: str) -> None:
    proc = launch("-c", "examples/quickstart.toml", "--log-level", "warning", probe=probe)
    assert proc.returncode == 0, proc.stderr
    assert "drop called; numpy loaded: False" in proc.stderr
    assert "pkts=" in proc.stdout  # and the agent ran: the replay's flows were printed


@pytest.mark.parametrize("argv", [
    ("--dry-run", "-c", "examples/quickstart.toml"),
    ("plugins",),
    ("config", "sample", "cache"),
    ("stats", "--socket", "/nonexistent/agent.sock"),
    ("reload", "--socket", "/nonexistent/agent.sock"),
    ("top", "--once", "--socket", "/nonexistent/agent.sock"),
    ("--version",),
    ("--bogus",),
])
@pytest.mark.parametrize("probe", [PROBE, PROBE_MODULE], ids=["script", "python-m"])
def test_the_other_subcommands_leave_the_page_cache_alone(
        argv: tuple[str, ...], probe: str) -> None:
    proc = launch(*argv, probe=probe)
    assert "drop called" not in proc.stderr
    assert proc.returncode in (0, 1, 2), proc.stderr  # each ran as it does from the shell
