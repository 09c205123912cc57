"""The test suite's reaper of namespaces left by killed test runs (tests/support/netns.py).

A test process killed mid-test (a timeout, SIGKILL) cannot delete its ``nfa-<pid>-<n>``
namespaces; the next session deletes those whose process is gone and that hold no process,
and nothing else. Sessions side by side (xdist workers, several checkouts' runs on one
machine) reap one at a time (``reaper_lock``).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.netns import (
    REAPER_LOCK,
    Netns,
    NetnsError,
    reap_stale,
    reaper_lock,
    stale_names,
)

ROOT = Path(__file__).resolve().parents[2]


def test_only_names_of_dead_test_processes_are_stale():
    names = ["nfa-100-1", "nfa-200-3", "nfa-100", "nfa-x-1", "other-100-1", "nfa-100-1-2",
             "router"]
    assert stale_names(names, alive=lambda pid: pid == 200) == ["nfa-100-1"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.netns
def test_reap_deletes_a_dead_runs_namespace_and_keeps_live_ones():
    # the lock: a test session starting meanwhile (another worker, another checkout's run)
    # must not reap the dead process's namespace before this test's reaper does
    with reaper_lock():
        _reap_a_dead_runs_namespace()


def _reap_a_dead_runs_namespace() -> None:
    dead = Netns(name=f"nfa-{_dead_pid()}-1").create()
    try:
        with Netns() as live:  # named after this (live) process
            reaped = reap_stale(locked=True)
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                    check=True).stdout.split()
            assert dead.name in reaped
            assert dead.name not in listed
            assert live.name in listed and live.name not in reaped
    finally:  # if the reaper failed, the test still leaves nothing behind
        subprocess.run(["ip", "netns", "del", dead.name], capture_output=True, check=False)


def test_every_session_takes_the_same_reaper_lock_whatever_its_tmpdir(tmp_path: Path) -> None:
    """The lock file came from ``tempfile.gettempdir()``: a session with another ``TMPDIR``
    took another lock and could reap a namespace this one's reaper test had just made."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    other = subprocess.run([sys.executable, "-c", "from tests.support.netns import "
                            "REAPER_LOCK; print(REAPER_LOCK)"], cwd=ROOT, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert other == str(REAPER_LOCK)
    assert REAPER_LOCK.parent in (Path("/run/lock"), Path("/tmp"))


def test_a_reaper_lock_held_too_long_fails_with_a_message_that_names_it(tmp_path: Path
                                                                         ) -> None:
    """A hung session holding the lock made every later session wait forever, silently."""
    path = tmp_path / "reaper.lock"
    with open(path, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(NetnsError, match=f"lock {path} is still held after 0.1 s"), \
                reaper_lock(timeout=0.1, path=path):
            pass
    with reaper_lock(timeout=0.1, path=path):  # free again: taken at once
        pass
