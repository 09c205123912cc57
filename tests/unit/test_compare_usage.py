"""bench/compare/run.py's CPU samples: the phase split (flood, settle, stop) reads each
process's CPU in ns, not in ``stat``'s 10 ms ticks that truncate (which moved 0-20 ms of every
run's earlier phases into its stop phase)."""

from __future__ import annotations

import subprocess
import sys

from tests.e2e.test_bench_compare import compare_harness

RUN = compare_harness()

#: burn CPU until 7-10 ms past a multiple of 10 ms (ticks would lose at least 7 ms there),
#: say how much, then wait on stdin without using any
BURN = """
import sys, time
while time.process_time() < 0.05 or time.process_time() * 100 % 1 < 0.7:
    pass
print(time.process_time(), flush=True)
sys.stdin.read()
"""


def test_a_sample_is_the_process_cpu_to_the_millisecond():
    child = subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        said = float(child.stdout.readline())
        usage = RUN._read_usage(child.pid)
        assert usage is not None
        sampled = usage[0]
    finally:
        child.communicate("")
    assert said <= sampled < said + 0.003


def test_a_gone_process_has_no_cpu_clock():
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    assert RUN.process_cpu_s(int(child.stdout)) is None


def test_a_process_reaped_while_sampled_keeps_its_last_cpu(monkeypatch):
    """The process is reaped after its ``status`` was read but before its CPU clock: the
    sample counts it as gone and keeps the last ns figure, never a ``stat`` tick figure up
    to 10 ms below it (the tree's CPU went backwards)."""
    child = subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    usage = RUN.Usage(child.pid)
    try:
        assert child.stdout is not None
        child.stdout.readline()
        first = usage.sample(find=False)
        monkeypatch.setattr(RUN, "process_cpu_s", lambda pid: None)  # the clock of a reaped pid
        assert RUN._read_usage(child.pid) is None
        assert usage.sample(find=False) == first
    finally:
        usage._stop.set()
        usage._thread.join()
        child.communicate("")
