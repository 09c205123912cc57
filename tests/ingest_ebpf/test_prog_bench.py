"""The program-cost benches of bench/ebpf: what they measure is the program they claim to.

``prog_cost.py --new-only`` inserts many distinct flows into the flow tables with
``BPF_PROG_TEST_RUN`` and runs each again; its harness fails unless the tables then hold every
packet with sane times (new flows take the tick clock, shared and per-CPU hash, slots or not).
``progstats.py`` attributes programs to an agent by the BPF program fds its processes hold.
Only counts and ids are asserted, never times.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from netflow_agent.plugins.ingest_ebpf._loader import Loader

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ebpf"
sys.path.insert(0, str(BENCH))

from progstats import prog_ids  # noqa: E402  (bench/ebpf/progstats.py)

pytestmark = pytest.mark.bpf


def test_new_flow_bench_accounts_every_packet():
    out = subprocess.run([sys.executable, str(BENCH / "prog_cost.py"), "--new-only", "--runs",
                          "1", "--new-flows", "6000"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines()
            if line.startswith("| ") and "slots" in line]
    assert len(rows) == 4, out.stdout
    for row in rows:
        new, known = (float(c) for c in row.strip("|").split("|")[1:3])
        assert new > 0 and known > 0, row


def test_progstats_finds_the_programs_a_process_holds():
    loader = Loader(maxflows=1024, slots=64)
    try:
        ours = set(loader.prog_ids().values())
        assert ours and ours <= prog_ids({os.getpid()})
        assert not ours & prog_ids({os.getppid()})
    finally:
        loader.close()
